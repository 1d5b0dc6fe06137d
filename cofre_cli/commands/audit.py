"""`cofre audit`: signed tree heads, proofs, verification and export of the audit log.

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cofre_cli._shared import cli_settings, fail_cleanly

MAX_LEAF = 2**62  # the API's bound on a leaf index or tree size (api/routes/audit.py)

audit_app = typer.Typer(
    help="The tamper-evident audit log: signed heads, proofs, verification, export. "
    "Reads of the log (head, prove, verify, export, verify-archive --online) write an "
    "audit_read entry first and read nothing if it cannot be written (run them against "
    "the primary database).",
    no_args_is_help=True,
)


@audit_app.command("sequence")
@fail_cleanly
def audit_sequence() -> None:
    """Integrate every queued entry into the tree now and sign a head for the new size."""
    from audit.sequencer import Sequencer
    from cofre_cli._audit_key import vault_audit_signer
    from cofre_cli._opening import open_database, open_hsm

    settings = cli_settings()
    engine = open_database(settings)
    sequencer = Sequencer(engine, vault_audit_signer(settings, open_hsm(settings)))
    count = sequencer.drain()
    typer.echo(f"integrated {count} entries")


@audit_app.command("head")
@fail_cleanly
def audit_head() -> None:
    """Print the latest signed tree head as JSON (size, root, time, key, signature)."""
    from audit.store import AuditStore
    from cofre_cli._opening import open_database
    from cofre_cli.audit_trail import record_cli_read

    engine = open_database(cli_settings())
    record_cli_read(engine, "cofre audit head", "head")
    head = AuditStore(engine).latest_head()
    if head is None:
        typer.echo("no signed tree head yet", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(head.as_json(), indent=2))


BeforeFirstStartOpt = Annotated[
    bool,
    typer.Option(
        "--before-first-start",
        help="On a node whose key registry holds no key yet (never started, no `cofre hsm "
        "init`): print the token's newest audit key, unchecked, with a warning.",
    ),
]


@audit_app.command("vkey")
@fail_cleanly
def audit_vkey(before_first_start: BeforeFirstStartOpt = False) -> None:
    """Print the audit log's note verifier key (c2sp.org/signed-note, type 0x02 ECDSA):
    what each witness operator pins for this vault (`cofre witness serve --logs`)."""
    from audit.heads import log_origin, log_verifier_key
    from cofre_cli._audit_key import vault_audit_signer
    from cofre_cli._opening import open_hsm

    settings = cli_settings()
    provider = open_hsm(settings)
    signer = vault_audit_signer(settings, provider, before_first_start=before_first_start)
    pem = signer.public_key_pem()
    typer.echo(log_verifier_key(log_origin(settings.audit.log_id), pem).encode())


@audit_app.command("public-key")
@fail_cleanly
def audit_public_key(
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout.")] = None,
    before_first_start: BeforeFirstStartOpt = False,
) -> None:
    """Print the PEM public key of the audit log's current signing key (the vault's:
    its newest verified handover's, else its newest registered audit key, as `vkey` and
    `export` use): what an auditor pins with `--public-key` (`cofre audit verify`,
    `cofre evidence verify`). Give it out of band."""
    from cofre_cli._audit_key import vault_audit_signer
    from cofre_cli._opening import open_hsm

    settings = cli_settings()
    provider = open_hsm(settings)
    signer = vault_audit_signer(settings, provider, before_first_start=before_first_start)
    pem = signer.public_key_pem()
    if out is None:
        typer.echo(pem.decode(), nl=False)
    else:
        out.write_bytes(pem)


@audit_app.command("prove")
@fail_cleanly
def audit_prove(
    # Bounded as the API bounds them: a number past what the database holds was a
    # driver's OverflowError and a traceback, after the read's entry (review of session 32).
    index: Annotated[
        int, typer.Option("--index", min=0, max=MAX_LEAF, help="Leaf index of the entry.")
    ],
    size: Annotated[
        int | None,
        typer.Option("--size", min=1, max=MAX_LEAF, help="Tree size (default: the whole tree)."),
    ] = None,
    consistency_from: Annotated[
        int | None,
        typer.Option(
            "--from-size",
            min=1,
            max=MAX_LEAF,
            help="Also prove consistency from this earlier size.",
        ),
    ] = None,
) -> None:
    """Print an inclusion proof for entry INDEX (and, with --from-size, a consistency
    proof), checked against the recomputed root before it is printed."""
    from audit.merkle import hash_b64, leaf_hash, verify_consistency, verify_inclusion
    from audit.store import AuditStore
    from cofre_cli._opening import open_database
    from cofre_cli.audit_trail import record_cli_read

    engine = open_database(cli_settings())
    record_cli_read(
        engine,
        "cofre audit prove",
        "inclusion proof",
        index=index,
        size=size,
        from_size=consistency_from,
    )
    store = AuditStore(engine)
    tree_size = size if size is not None else store.size()
    entry = store.entry(index)
    proof = store.inclusion_proof(index, tree_size)
    root = store.root_at(tree_size)
    leaf = leaf_hash(entry.encode("utf-8"))
    verify_inclusion(leaf, index, tree_size, proof, root)
    out: dict[str, Any] = {
        "index": index,
        "tree_size": tree_size,
        "entry": entry,
        "leaf_hash": hash_b64(leaf),
        "root_hash": hash_b64(root),
        "inclusion_proof": [hash_b64(p) for p in proof],
    }
    head = store.head_at(tree_size)
    out["signed_head"] = head.as_json() if head else None
    if consistency_from is not None:
        consistency = store.consistency_proof(consistency_from, tree_size)
        verify_consistency(
            consistency_from, tree_size, consistency, store.root_at(consistency_from), root
        )
        out["consistency_from"] = consistency_from
        out["consistency_proof"] = [hash_b64(p) for p in consistency]
    typer.echo(json.dumps(out, indent=2))


@audit_app.command("verify")
@fail_cleanly
def audit_verify(
    public_key: Annotated[
        Path | None,
        typer.Option(help="PEM public key of the audit signer (default: ask the HSM)."),
    ] = None,
    kept_head: Annotated[
        Path | None,
        typer.Option(
            "--head",
            help="A signed head kept outside the database (`cofre audit head` output): the "
            "log must still contain it (detects a restore that lost entries, or a fork).",
        ),
    ] = None,
    witness_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--witness-key",
            help="A witness's verifier key file (cosignature/v1 vkey), pinned out of band; "
            "repeatable. Every stored cosignature must verify and the newest head must "
            "carry --quorum of them.",
        ),
    ] = None,
    quorum: Annotated[
        int, typer.Option("--quorum", min=1, help="Witness cosignatures required.")
    ] = 1,
    unsafe_no_witness: Annotated[
        bool,
        typer.Option(
            "--unsafe-no-witness",
            help="UNSAFE: skip the witness check (only the vault's own key then vouches).",
        ),
    ] = False,
) -> None:
    """Recompute the whole tree from the stored entries and check it against every signed
    tree head and signature (following audit key handovers from the key given), and the
    witnesses' cosignatures. Exits 1 naming the first bad leaf index, head or witness.

    Witnesses: every stored cosignature by a --witness-key must verify, the newest head
    and every audit key handover must carry --quorum of them, and each configured
    witness among them is asked whether it has cosigned a checkpoint the log no longer
    holds (one it cannot reach is a warning). Without --witness-key it fails
    (--unsafe-no-witness: the vault's own key alone)."""
    from audit.errors import AuditVerificationFailed
    from audit.store import AuditStore
    from cofre_cli._audit_key import vault_audit_signer
    from cofre_cli._opening import open_database, open_hsm
    from cofre_cli.audit_trail import record_cli_read
    from cofre_cli.commands._audit_checks import check_kept_head, check_witnesses, read_pem

    settings = cli_settings()
    if public_key is not None:
        pem = read_pem(public_key)
    else:
        pem = vault_audit_signer(settings, open_hsm(settings)).public_key_pem()
    engine = open_database(settings)
    try:
        # Before the read, like every read of the log; unwritable, nothing is verified.
        record_cli_read(engine, "cofre audit verify", "verify")
        store = AuditStore(engine)
        report = store.verify(pem)
        if kept_head is not None:
            check_kept_head(store, kept_head, pem)
        witnessed = check_witnesses(
            store, witness_key or [], quorum, unsafe_no_witness, settings=settings, pem=pem
        )
    except AuditVerificationFailed as exc:
        typer.echo(f"FAILED: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    latest = report.latest_head
    if witnessed is None:
        typer.echo(
            "UNSAFE, NOT WITNESSED: only the operator's own key vouches for this log (an "
            "operator with the HSM PIN can rewrite it unnoticed)",
            err=True,
        )
    else:
        typer.echo(f"witnessed: {witnessed} cosignatures verify, newest head has a quorum")
    typer.echo(
        f"OK: {report.entries} entries, {report.heads_checked} signed tree heads verified"
        + (f", latest head size {latest.tree_size}" if latest else ", no signed head yet")
        + (f"; {report.queued} entries queued for sequencing" if report.queued else "")
        + (
            f"; leaves 0..{report.online_from - 1} were retired to the archive (check them "
            "with `cofre audit verify-archive`)"
            if report.online_from
            else ""
        )
    )


@audit_app.command("export")
@fail_cleanly
def audit_export(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="File to write (JSON lines): a new 0600 file, renamed into place (an "
            "existing regular file of yours is replaced, never written into); never a "
            "link, pipe or device.",
        ),
    ],
) -> None:
    """Write every entry (with leaf hash), every signed head and the audit public key as
    JSON lines, for offline verification."""
    from audit.store import AuditStore
    from cofre_cli._audit_key import vault_audit_signer
    from cofre_cli._opening import open_database, open_hsm
    from cofre_cli.audit_trail import private_export, record_cli_read, shown_path

    settings = cli_settings()
    pem = vault_audit_signer(settings, open_hsm(settings)).public_key_pem()
    engine = open_database(settings)
    # Recorded once the file is open and checked (a FIFO or a link is refused unread),
    # before a byte of the log is in it; a read that cannot be recorded leaves no file.
    recorded = out.absolute()
    lines = 1  # the public key's line, then every entry and head
    with private_export(
        out,
        lambda: record_cli_read(engine, "cofre audit export", "export", out=str(recorded)[:256]),
    ) as handle:
        handle.write(json.dumps({"type": "public_key", "pem": pem.decode()}) + "\n")
        for line in AuditStore(engine).export():
            handle.write(line + "\n")
            lines += 1
    typer.echo(f"wrote {lines} records to {shown_path(out)}")


# ------------------------------------------------------------------ growth: archive
BucketOpt = Annotated[
    str | None,
    typer.Option("--bucket", help="S3 bucket (default: archive.bucket in the settings)."),
]
PrefixOpt = Annotated[
    str | None,
    typer.Option("--prefix", help="Key prefix in the bucket (default: archive.prefix)."),
]
PublicKeyOpt = Annotated[
    Path | None,
    typer.Option(help="PEM public key of the audit signer (default: ask the HSM)."),
]


def _object_store(settings: Any, bucket: str | None) -> Any:
    """The S3 bucket named by `--bucket` or the settings; credentials from boto3's
    default chain only (never the command line)."""
    from cofre.errors import ConfigurationError
    from infra_pci.objectstore import S3ObjectStore

    archive = settings.archive
    name = bucket or archive.bucket
    if not name:
        raise ConfigurationError("no archive bucket: give --bucket or set COFRE_ARCHIVE__BUCKET")
    return S3ObjectStore(name, region=archive.region, endpoint_url=archive.endpoint_url)


def _public_key_pem(settings: Any, path: Path | None) -> bytes:
    from cofre_cli._audit_key import vault_audit_signer
    from cofre_cli._opening import open_hsm
    from cofre_cli.commands._audit_checks import read_pem

    if path is not None:
        return read_pem(path)
    return vault_audit_signer(settings, open_hsm(settings)).public_key_pem()


@audit_app.command("partitions")
@fail_cleanly
def audit_partitions(
    ensure: Annotated[
        bool, typer.Option("--ensure", help="Make the next months' partitions now.")
    ] = False,
) -> None:
    """List the monthly partitions of the audit entries (PostgreSQL) and the retired
    ones; with --ensure, make the next months' partitions first."""
    from sqlalchemy import select

    from audit.partitions import default_partition_rows, ensure_partitions, monthly_partitions
    from audit.schema import audit_retired
    from cofre.dberrors import database_errors_as
    from cofre_cli._opening import open_database
    from vault.errors import StorageUnavailable

    engine = open_database(cli_settings())
    try:
        with (
            database_errors_as(StorageUnavailable, "the audit partition list"),
            engine.begin() as c,
        ):
            made = ensure_partitions(c) if ensure else 0
            partitions = monthly_partitions(c)
            in_default = default_partition_rows(c)
            retired = c.execute(select(audit_retired).order_by(audit_retired.c.range_from)).all()
    finally:
        engine.dispose()
    if engine.dialect.name != "postgresql":
        typer.echo("SQLite: the audit entries are one table (partitions are PostgreSQL's)")
    for row in retired:
        typer.echo(
            f"{row.partition}  retired  {row.entries} entries, online from leaf {row.online_from}"
        )
    for partition in partitions:
        typer.echo(
            f"{partition.name}  online  {partition.range_from:%Y-%m-%d} .. "
            f"{partition.range_to:%Y-%m-%d}"
        )
    if partitions or in_default:
        typer.echo(f"audit_entries_default  online  {in_default} entries")
    if ensure:
        typer.echo(f"made {made} partitions")


@audit_app.command("archive")
@fail_cleanly
def audit_archive(bucket: BucketOpt = None, prefix: PrefixOpt = None) -> None:
    """Ship every signed leaf not archived yet to the bucket as sealed segments (with
    their signed heads and a manifest each); record and audit each. Idempotent."""
    from audit.archive import archive_log, normalize_prefix
    from cofre_cli._opening import open_database

    settings = cli_settings()
    objects = _object_store(settings, bucket)
    key_prefix = settings.archive.prefix if prefix is None else prefix
    # PCI DSS 10.5.1, fail closed: nothing is shipped to a bucket that cannot keep it
    # for the total retention; what is shipped is locked that long.
    objects.require_retention(settings.archive.total_retention_months, normalize_prefix(key_prefix))
    engine = open_database(settings)
    try:
        segments = archive_log(
            engine,
            objects,
            prefix=key_prefix,
            max_entries=settings.archive.segment_max_entries,
        )
    finally:
        engine.dispose()
    for segment in segments:
        typer.echo(
            f"archived leaves {segment.start}..{segment.end - 1} as {segment.object_key} "
            f"({segment.object_bytes} bytes, sha256 {segment.object_sha256})"
            + ("" if segment.uploaded else " [already uploaded; recorded]")
        )
    typer.echo(f"archived {len(segments)} segments")


@audit_app.command("verify-archive")
@fail_cleanly
def audit_verify_archive(
    bucket: BucketOpt = None,
    prefix: PrefixOpt = None,
    public_key: PublicKeyOpt = None,
    from_head: Annotated[
        Path | None,
        typer.Option(
            "--from-head",
            help="A head verified by an earlier run (--save-head): check only what follows.",
        ),
    ] = None,
    save_head: Annotated[
        Path | None,
        typer.Option("--save-head", help="Write the last verified head here (JSON)."),
    ] = None,
    online: Annotated[
        bool,
        typer.Option("--online", help="Also check the database's log continues from it."),
    ] = False,
) -> None:
    """Verify the archived chain: no gap or overlap, every segment's SHA-256, entries,
    signed head and consistency with the segment before. Exits 1 naming the segment."""
    from audit.archive import verify_archive
    from audit.errors import AuditVerificationFailed

    settings = cli_settings()
    pem = _public_key_pem(settings, public_key)
    objects = _object_store(settings, bucket)
    try:
        trusted = _read_head(from_head, pem) if from_head is not None else None
        report = verify_archive(
            objects, settings.archive.prefix if prefix is None else prefix, pem, trusted=trusted
        )
        if online and report.last_head is not None:
            _check_online_continues(settings, report.last_head)
    except AuditVerificationFailed as exc:
        typer.echo(f"FAILED: {exc}", err=True)
        raise typer.Exit(1) from None
    last = report.last_head
    if save_head is not None and last is not None:
        save_head.write_text(json.dumps(last.as_json(), indent=2) + "\n", encoding="utf-8")
    typer.echo(
        f"OK: {report.segments} segments, {report.entries} entries verified"
        + (f", last archived head size {last.tree_size}" if last else ", nothing archived")
        + ("; the online log continues from it" if online and last else "")
    )


def _read_head(path: Path, pem: bytes) -> Any:
    from audit.errors import AuditVerificationFailed
    from audit.heads import verify_tree_head
    from audit.segments import head_from_json

    try:
        head = head_from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuditVerificationFailed(
            f"cannot read the head {path} ({type(exc).__name__})"
        ) from None
    verify_tree_head(head, pem)
    return head


def _check_online_continues(settings: Any, archived: Any) -> None:
    """Raise `AuditVerificationFailed` unless the database holds the archived last head
    and its latest head is consistent with it."""
    from audit.errors import AuditVerificationFailed
    from audit.merkle import verify_consistency
    from audit.store import AuditStore
    from cofre_cli._opening import open_database
    from cofre_cli.audit_trail import record_cli_read

    engine = open_database(settings)
    try:
        record_cli_read(engine, "cofre audit verify-archive", "archive continuity")
        store = AuditStore(engine)
        stored = store.head_at(archived.tree_size)
        if stored is None or stored.root_hash != archived.root_hash:
            raise AuditVerificationFailed(
                f"the database has no head {archived.tree_size} equal to the last archived "
                "one: the online log does not continue the archive"
            )
        latest = store.latest_head()
        if latest is not None and latest.tree_size > archived.tree_size:
            proof = store.consistency_proof(archived.tree_size, latest.tree_size)
            verify_consistency(
                archived.tree_size, latest.tree_size, proof, archived.root_hash, latest.root_hash
            )
    finally:
        engine.dispose()


@audit_app.command("retire")
@fail_cleanly
def audit_retire(
    bucket: BucketOpt = None,
    prefix: PrefixOpt = None,
    public_key: PublicKeyOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and report; drop nothing.")
    ] = False,
) -> None:
    """Drop the monthly partitions older than archive.online_retention_months, each only
    if all its leaves are sequenced, archived and verified in the bucket (refuses
    otherwise). Run as the owner role; every drop is audited."""
    from datetime import UTC, datetime

    from audit.retention import retire_partitions
    from cofre_cli._opening import open_database, refuse_unverified_owner_database

    settings = cli_settings()
    refuse_unverified_owner_database(settings)  # run as the owner role (atk49h)
    pem = _public_key_pem(settings, public_key)
    objects = _object_store(settings, bucket)
    engine = open_database(settings)
    try:
        retired = retire_partitions(
            engine,
            objects,
            settings.archive.prefix if prefix is None else prefix,
            pem,
            online_months=settings.archive.online_retention_months,
            now=datetime.now(UTC),
            dry_run=dry_run,
        )
    finally:
        engine.dispose()
    verb = "would drop" if dry_run else "dropped"
    for item in retired:
        typer.echo(
            f"{verb} {item.name}: {item.entries} entries (leaves {item.first_leaf}.."
            f"{item.last_leaf}), online log from leaf {item.online_from}"
            + (
                f", {item.carried_forward} key records carried forward"
                if item.carried_forward
                else ""
            )
        )
    typer.echo(f"{verb} {len(retired)} partitions")
