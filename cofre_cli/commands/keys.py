"""`cofre keys`: key rotation under dual control, as a security officer over mTLS.

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cofre_cli._shared import CertOpt, KeyOpt, Officer, admin_call, admin_client, fail_cleanly

keys_app = typer.Typer(
    help="Key rotation under dual control (security officers, over mTLS).",
    no_args_is_help=True,
)


def _show_ceremony(data: dict[str, Any]) -> None:
    typer.echo(f"ceremony {data['id']}: {data['kind']} rotation, {data['state']}")
    typer.echo(
        f"  proposed by {data['proposer']}; approved by "
        f"{', '.join(data['approvers']) or 'nobody yet'} "
        f"({len(data['approvers'])}/{data['approvals_needed']} approvals needed)"
    )
    if data["new_version"] is not None:
        typer.echo(
            f"  version {data['old_version']} -> {data['new_version']}; progress "
            f"{data['progress_done']}/{data['progress_total']}"
        )
    if data.get("destroy_after"):
        typer.echo(f"  old key destroyed after {data['destroy_after']}")


def _decide(
    ceremony_id: str, decision: str, officer: str, cert: Path | None, key: Path | None
) -> None:
    """POST an officer's decision (approve or cancel) on a ceremony and show the result."""
    with admin_client(officer, cert, key) as client:
        path = f"/v1/admin/keys/rotations/{ceremony_id}/{decision}"
        _show_ceremony(admin_call(client, "POST", path))


@keys_app.command("list")
@fail_cleanly
def keys_list(officer: Officer = "officer-alice", cert: CertOpt = None, key: KeyOpt = None) -> None:
    """Key versions and states, KEK versions, records each data key protects, ceremonies."""
    with admin_client(officer, cert, key) as client:
        inventory = admin_call(client, "GET", "/v1/admin/keys")
        ceremonies = admin_call(client, "GET", "/v1/admin/keys/rotations")
    for k in inventory["token_keys"]:
        extra = f", {k['records']} records" if "records" in k else ""
        typer.echo(
            f"token  {k['label']:<16} {k['type']:<15} sensitive={k['sensitive']} "
            f"extractable={k['extractable']}{extra}"
        )
    for d in inventory["data_keys"]:
        records = f", {d['records']} records" if d["records"] is not None else ""
        typer.echo(
            f"data   {d['purpose']}-v{d['version']:<3} {d['state']:<10} under "
            f"{d['kek']}, created {d['created_at']}{records}"
        )
    for c in ceremonies:
        typer.echo(f"ceremony {c['id']} {c['kind']:<11} {c['state']}")


@keys_app.command("rotate")
@fail_cleanly
def keys_rotate(
    kind: Annotated[str, typer.Option("--kind", help="kek, data or fingerprint")],
    officer: Officer = "officer-alice",
    cert: CertOpt = None,
    key: KeyOpt = None,
) -> None:
    """Propose a rotation. It runs once enough other officers approve it."""
    with admin_client(officer, cert, key) as client:
        _show_ceremony(admin_call(client, "POST", "/v1/admin/keys/rotations", {"kind": kind}))


@keys_app.command("approve")
@fail_cleanly
def keys_approve(
    ceremony_id: str, officer: Officer = "officer-bob", cert: CertOpt = None, key: KeyOpt = None
) -> None:
    """Approve a proposal (you cannot approve your own)."""
    _decide(ceremony_id, "approve", officer, cert, key)


@keys_app.command("cancel")
@fail_cleanly
def keys_cancel(
    ceremony_id: str, officer: Officer = "officer-alice", cert: CertOpt = None, key: KeyOpt = None
) -> None:
    """Cancel a pending proposal."""
    _decide(ceremony_id, "cancel", officer, cert, key)


@keys_app.command("status")
@fail_cleanly
def keys_status(
    ceremony_id: str,
    officer: Officer = "officer-alice",
    cert: CertOpt = None,
    key: KeyOpt = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow with a progress bar.")] = False,
) -> None:
    """Show a ceremony; with --watch, a progress bar until it finishes."""
    import time

    from rich.progress import Progress

    with admin_client(officer, cert, key) as client:
        path = f"/v1/admin/keys/rotations/{ceremony_id}"
        data = admin_call(client, "GET", path)
        if watch and data["state"] == "running":
            with Progress() as progress:
                task = progress.add_task(
                    f"{data['kind']} rotation", total=max(1, data["progress_total"])
                )
                while data["state"] == "running":
                    progress.update(task, completed=data["progress_done"])
                    time.sleep(0.5)
                    data = admin_call(client, "GET", path)
                progress.update(task, completed=max(1, data["progress_total"]))
        _show_ceremony(data)
