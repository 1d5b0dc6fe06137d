"""`cofre evidence`: export signed PCI DSS evidence bundles and verify them offline.

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final

import typer

from cofre.errors import ConfigurationError
from cofre_cli._shared import (
    CertOpt,
    KeyOpt,
    Officer,
    admin_client,
    fail_cleanly,
    vault_answering,
)

CHUNK: Final = 64 * 1024

evidence_app = typer.Typer(
    help="Signed PCI DSS evidence bundles: export (officers, auditors) and offline verify.",
    no_args_is_help=True,
)


@evidence_app.command("export")
@fail_cleanly
def evidence_export(
    period_to: Annotated[str, typer.Option("--to", help="End, exclusive (ISO date or time).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the bundle (.tar.gz).")],
    period_from: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Start (ISO date or time, UTC); with --previous, where the previous ended.",
        ),
    ] = None,
    previous: Annotated[
        Path | None, typer.Option("--previous", help="The previous bundle, to chain to it.")
    ] = None,
    identity: Officer = "auditor",
    cert: CertOpt = None,
    key: KeyOpt = None,
) -> None:
    """Ask the vault for a signed evidence bundle of a period, as an officer or auditor.
    A chained bundle (`--previous`) starts exactly where the previous one ended."""
    body: dict[str, Any] = {"to": _utc(period_to, "--to")}
    if previous is not None:
        from cofre_evidence_verifier.bundle import MANIFEST, read_bundle

        before = json.loads(read_bundle(previous)[MANIFEST])
        body["previous_head"] = before["covering_head"]
        body["previous_end_index"] = before["entries"]["end_index"]
        period_from = period_from or before["period"]["to"]
    if period_from is None:
        raise ConfigurationError("--from is required unless --previous gives the start")
    body["from"] = _utc(period_from, "--from")
    # `vault_answering`: not a traceback (session 36: a stopped vault gave one) but one
    # line, as `cofre keys` says it; `_save` has removed a partial download (the vault
    # recorded the export before its first byte: export again).
    with (
        admin_client(identity, cert, key) as client,
        vault_answering(client),
        client.stream("POST", "/v1/evidence", json=body) as response,
    ):
        if response.status_code != 200:
            problem = json.loads(response.read())
            typer.echo(f"error [{problem.get('code')}]: {problem.get('detail')}", err=True)
            raise typer.Exit(1)
        written = _save(response.iter_bytes(CHUNK), out)
    typer.echo(f"wrote {out} ({written} bytes)")


def _utc(text: str, option: str) -> str:
    """`text` (an ISO date or time) with a time zone: a date or a time without one is
    UTC, as the options' help says (the vault refuses a period without a zone)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(f"{option} must be an ISO 8601 date or time") from None
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).isoformat()


def _save(chunks: Iterator[bytes], out: Path) -> int:
    """Write the streamed bundle to `out` chunk by chunk (never whole in memory) through
    `private_download`: a new 0600 file, never through a link, that takes the name once
    whole and synced. A full disk, a download cut off or SIGTERM/SIGINT leave `out` as
    it was and no partial file (drill 36: the `<out>.part` file a SIGTERM left then
    refused every later download to that name, and a full disk ended in a traceback);
    a file a SIGKILL left is removed by the next export to that directory. Returns the
    number of bytes written; raises `ConfigurationError`."""
    from cofre_cli.audit_trail import private_download

    written = 0
    with private_download(out) as handle:
        for chunk in chunks:
            handle.write(chunk)
            written += len(chunk)
    return written


@evidence_app.command("verify")
def evidence_verify(
    bundle: Annotated[Path, typer.Argument(help="The bundle (.tar.gz).")],
    public_key: Annotated[
        Path, typer.Option("--public-key", help="The audit public key (PEM) you were given.")
    ],
    previous: Annotated[
        Path | None, typer.Option("--previous", help="The previous bundle of the chain.")
    ] = None,
    earlier: Annotated[
        list[Path] | None,
        typer.Option(
            "--earlier",
            help="A bundle before the previous one (repeatable, newest first): check 6c "
            "needs the bundles back to the signing of each key ceremony's proposal.",
        ),
    ] = None,
    witness_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--witness-key",
            help="A witness's cosignature/v1 verifier key file, pinned out of band "
            "(repeatable); the covering head must carry --quorum of their cosignatures.",
        ),
    ] = None,
    quorum: Annotated[
        int,
        typer.Option(
            "--quorum",
            min=1,
            help="Cosignatures of distinct pinned witnesses required: more than half of them.",
        ),
    ] = 1,
    unsafe_no_witness: Annotated[
        bool,
        typer.Option(
            "--unsafe-no-witness",
            help="UNSAFE: skip the witness check (only the vault's own key then vouches).",
        ),
    ] = False,
    origin: Annotated[
        str | None,
        typer.Option(
            "--origin",
            help="The log's origin you pinned (cofre-audit/<log id>): every checkpoint "
            "must be of that log (required unless --previous pins it).",
        ),
    ] = None,
    unsafe_any_origin: Annotated[
        bool,
        typer.Option(
            "--unsafe-any-origin",
            help="UNSAFE: verify without pinning the log (a bundle of any log the audit "
            "key signs then verifies); the verdict says so.",
        ),
    ] = False,
    authority: Annotated[
        list[str] | None,
        typer.Option(
            "--authority",
            help="The vault's own name (host or host:port) you pinned: every officer "
            "signature of a key ceremony must be for one of them (repeatable; without it, "
            "the names the bundle records, which its exporter wrote).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report.")] = False,
    html_out: Annotated[
        Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")
    ] = None,
) -> None:
    """Verify a bundle offline (no vault, HSM or network): signatures, file hashes, the
    Merkle tree, proofs. Exit 1 naming each file or entry that is wrong; 2 for a usage
    error, the log left unpinned included (neither --origin nor --previous). The same as
    `cofre-verify` from the standalone `cofre-evidence-verifier` package, which it calls."""
    from cofre_evidence_verifier.cli import EARLIER_WITHOUT_PREVIOUS, origin_usage_problem
    from cofre_evidence_verifier.html import render_html
    from cofre_evidence_verifier.report import render_text
    from cofre_evidence_verifier.vault_names import parse_name
    from cofre_evidence_verifier.verify import verify_bundle
    from cofre_evidence_verifier.witnesses import read_witness_keys

    try:
        keys = read_witness_keys([p.read_text(encoding="utf-8") for p in witness_key or []])
    except (OSError, ValueError) as exc:  # a NoteError, or a file that is not UTF-8
        typer.echo(f"cannot read a witness key: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        public_pem = public_key.read_bytes()
    except OSError as exc:
        typer.echo(f"cannot read the public key: {exc}", err=True)
        raise typer.Exit(2) from None
    # The same rule and words as cofre-verify's: the log is pinned (--origin, or the
    # previous bundle's), or left unpinned by name; an origin no checkpoint can have
    # would only ever fail to match.
    origin_problem = origin_usage_problem(origin, previous, unsafe_any_origin)
    if origin_problem is not None:
        typer.echo(origin_problem, err=True)
        raise typer.Exit(2)
    if earlier and previous is None:
        typer.echo(EARLIER_WITHOUT_PREVIOUS, err=True)
        raise typer.Exit(2)
    for name in authority or []:
        try:
            parse_name(name)
        except ValueError as exc:
            typer.echo(f"--authority: {exc}", err=True)
            raise typer.Exit(2) from None
    report = verify_bundle(
        bundle,
        public_pem,
        previous,
        witness_keys=keys,
        quorum=quorum,
        unsafe_no_witnesses=unsafe_no_witness,
        origin=origin,
        unsafe_any_origin=unsafe_any_origin,
        authorities=authority or None,
        earlier=earlier or (),
    )
    typer.echo(json.dumps(report.as_json(), indent=2) if as_json else render_text(report))
    if html_out is not None:
        try:
            html_out.write_text(render_html(report, bundle), encoding="utf-8")
        except OSError as exc:  # the verdict above stands; the page is not written
            typer.echo(f"cannot write the HTML report: {exc}", err=True)
            raise typer.Exit(2) from None
    if not report.ok:
        raise typer.Exit(1)
