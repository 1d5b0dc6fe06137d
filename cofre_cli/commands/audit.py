"""`cofre audit`: signed tree heads, proofs, verification and export of the audit log.

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cofre_cli._shared import cli_settings, fail_cleanly

audit_app = typer.Typer(
    help="The tamper-evident audit log: signed heads, proofs, verification, export.",
    no_args_is_help=True,
)


@audit_app.command("sequence")
@fail_cleanly
def audit_sequence() -> None:
    """Integrate every queued entry into the tree now and sign a head for the new size."""
    from audit.sequencer import Sequencer
    from cofre_cli.wiring import audit_signer, open_database, open_hsm

    settings = cli_settings()
    engine = open_database(settings)
    sequencer = Sequencer(engine, audit_signer(open_hsm(settings)))
    count = sequencer.drain()
    typer.echo(f"integrated {count} entries")


@audit_app.command("head")
@fail_cleanly
def audit_head() -> None:
    """Print the latest signed tree head as JSON (size, root, time, key, signature)."""
    from audit.store import AuditStore
    from cofre_cli.wiring import open_database

    head = AuditStore(open_database(cli_settings())).latest_head()
    if head is None:
        typer.echo("no signed tree head yet", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(head.as_json(), indent=2))


@audit_app.command("vkey")
@fail_cleanly
def audit_vkey() -> None:
    """Print the audit log's note verifier key (c2sp.org/signed-note, type 0x02 ECDSA):
    what each witness operator pins for this vault (`cofre witness serve --logs`)."""
    from audit.heads import log_origin, log_verifier_key
    from cofre_cli.wiring import audit_signer, open_hsm

    settings = cli_settings()
    pem = audit_signer(open_hsm(settings)).public_key_pem()
    typer.echo(log_verifier_key(log_origin(settings.audit.log_id), pem).encode())


@audit_app.command("prove")
@fail_cleanly
def audit_prove(
    index: Annotated[int, typer.Option("--index", help="Leaf index of the entry.")],
    size: Annotated[
        int | None, typer.Option("--size", help="Tree size (default: the whole tree).")
    ] = None,
    consistency_from: Annotated[
        int | None,
        typer.Option("--from-size", help="Also prove consistency from this earlier size."),
    ] = None,
) -> None:
    """Print an inclusion proof for entry INDEX (and, with --from-size, a consistency
    proof), checked against the recomputed root before it is printed."""
    from audit.merkle import hash_b64, leaf_hash, verify_consistency, verify_inclusion
    from audit.store import AuditStore
    from cofre_cli.wiring import open_database

    store = AuditStore(open_database(cli_settings()))
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
    tree head and signature. Exits 1 naming the first bad leaf index."""
    from audit.errors import AuditVerificationFailed
    from audit.store import AuditStore
    from cofre_cli.wiring import audit_signer, open_database, open_hsm

    settings = cli_settings()
    if public_key is not None:
        pem = public_key.read_bytes()
    else:
        pem = audit_signer(open_hsm(settings)).public_key_pem()
    try:
        store = AuditStore(open_database(settings))
        report = store.verify(pem)
        if kept_head is not None:
            _check_kept_head(store, kept_head, pem)
        witnessed = _check_witnesses(
            store, witness_key or [], quorum, unsafe_no_witness, settings=settings, pem=pem
        )
    except AuditVerificationFailed as exc:
        typer.echo(f"FAILED: {exc}", err=True)
        raise typer.Exit(1) from None
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
    )


def _check_witnesses(
    store: Any, files: list[Path], quorum: int, unsafe: bool, *, settings: Any, pem: bytes
) -> int | None:
    """Return how many stored cosignatures verify (None when no key is pinned and
    `unsafe`). Raises `AuditVerificationFailed` when one fails, the newest head lacks
    `quorum`, no key is pinned (fail closed), or a configured witness has cosigned a
    checkpoint this log no longer holds (asked live: a restore before any new write)."""
    from audit.errors import AuditVerificationFailed, NoteError
    from audit.note import VerifierKey
    from audit.witnessed import verify_witnessed
    from cofre_cli.witnessing import ask_witnesses

    if not files:
        if unsafe:
            return None
        raise AuditVerificationFailed(
            "no witness key pinned (--witness-key): nothing but the operator's own key "
            "vouches for this log, and its holder can rewrite it; pass the witnesses' "
            "keys, or --unsafe-no-witness to check the operator's signatures alone"
        )
    try:
        keys = [VerifierKey.parse(path.read_text(encoding="utf-8")) for path in files]
    except (OSError, NoteError) as exc:
        raise AuditVerificationFailed(f"cannot read a witness key: {exc}") from None
    for warning in ask_witnesses(settings, store, keys, pem):
        typer.echo(warning, err=True)
    return verify_witnessed(store.engine, store.heads(), keys, quorum)


def _check_kept_head(store: Any, path: Path, pem: bytes) -> None:
    """Raise `AuditVerificationFailed` unless the log still contains the signed head in
    `path`: same entries up to its size, hence the same root."""
    from audit.errors import AuditVerificationFailed
    from audit.heads import SignedTreeHead, verify_tree_head

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        head = SignedTreeHead(
            tree_size=int(data["tree_size"]),
            root_hash=base64.b64decode(data["root_hash"]),
            timestamp_ms=int(data["timestamp_ms"]),
            key_id=str(data["key_id"]),
            checkpoint=str(data["checkpoint"]),
            signature=base64.b64decode(data["signature"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuditVerificationFailed(
            f"cannot read the kept head {path} ({type(exc).__name__})"
        ) from None
    verify_tree_head(head, pem)
    size = store.size()
    if size < head.tree_size:
        raise AuditVerificationFailed(
            f"the log has {size} entries, fewer than the {head.tree_size} of the kept head: "
            f"entries {size} to {head.tree_size - 1} were removed (a restore from an older "
            "backup, or tampering)"
        )
    if store.root_at(head.tree_size) != head.root_hash:
        raise AuditVerificationFailed(
            f"the log's first {head.tree_size} entries do not hash to the kept head's root: "
            "the log was rewritten or forked (a restore from an older backup followed by "
            "new entries, or tampering)"
        )


@audit_app.command("export")
@fail_cleanly
def audit_export(
    out: Annotated[Path, typer.Option("--out", help="File to write (JSON lines).")],
) -> None:
    """Write every entry (with leaf hash), every signed head and the audit public key as
    JSON lines, for offline verification."""
    from audit.store import AuditStore
    from cofre_cli.wiring import audit_signer, open_database, open_hsm

    settings = cli_settings()
    pem = audit_signer(open_hsm(settings)).public_key_pem()
    lines = 0
    with out.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps({"type": "public_key", "pem": pem.decode()}) + "\n")
        for line in AuditStore(open_database(settings)).export():
            handle.write(line + "\n")
            lines += 1
    typer.echo(f"wrote {lines} records to {out}")
