"""`cofre keys`: key rotation under dual control, as a security officer over mTLS.

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cofre_cli._shared import CertOpt, KeyOpt, Officer, admin_call, admin_client, fail_cleanly

keys_app = typer.Typer(
    help="Key rotation under dual control (security officers, over mTLS).",
    no_args_is_help=True,
)


def _show_ceremony(data: dict[str, Any]) -> None:
    # A "register" ceremony records a key made on the token by hand: no rotation.
    what = "key registration" if data["kind"] == "register" else f"{data['kind']} rotation"
    typer.echo(f"ceremony {data['id']}: {what}, {data['state']}")
    named = data.get("registers")
    if named:  # what an approval's signature registers (atk49o: it was never shown)
        typer.echo(
            f"  registers {named.get('label')} as the key with CKA_ID {named.get('cka_id')}, "
            f"check value {named.get('check')}"
        )
    # An older vault's answer has no approvals_counting: show every approval, and say so.
    counting = data.get("approvals_counting")
    if counting is None:
        typer.echo("  (this vault does not say which approvals count: upgrade it)")
        counting = data["approvers"]
    typer.echo(
        f"  proposed by {data['proposer']}; approved by "
        f"{', '.join(data['approvers']) or 'nobody yet'} "
        f"({len(counting)}/{data['approvals_needed']} approvals needed)"
    )
    refused = data.get("approval_refused")
    if refused:  # the audit log shows it already started or cancelled: a row written back
        typer.echo(f"  NOT APPROVABLE: {refused}; cancel it (docs/key-ceremony.md)")
    stuck = data.get("stuck_tokens")
    if stuck:  # rows that fail authentication keep the rotation from completing (rot38)
        typer.echo(f"  CANNOT COMPLETE: tokens failing authentication: {', '.join(stuck)}")
        typer.echo(f"  what to do: {data.get('stuck_action')}")
    stale = [a for a in data["approvers"] if a not in counting]
    if stale:  # replaced MFA key, officer removed, or a row its officer never signed
        typer.echo(f"  not counting now: {', '.join(stale)}")
    if data["new_version"] is not None:
        typer.echo(
            f"  version {data['old_version']} -> {data['new_version']}; progress "
            f"{data['progress_done']}/{data['progress_total']}"
        )
    if data.get("destroy_after"):
        typer.echo(f"  old key destroyed after {data['destroy_after']}")


CeremonyId = Annotated[
    str, typer.Argument(help="The ceremony's id, as `rotate` printed it (or `list` shows it).")
]


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
    """Key versions and states, KEK versions, records each data key protects, each key's
    cryptoperiod (ok, expiring, overdue), ceremonies."""
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
    for p in inventory.get("cryptoperiods", []):
        typer.echo(
            f"period {p['key']:<16} {p['state']:<9} {p['started_at'][:10]} .. {p['ends_at'][:10]}"
        )
    for e in inventory.get("security_code_epochs", []):
        gone = f"destroyed {e['destroyed_at']}" if e["destroyed_at"] else "live"
        typer.echo(f"csc    {e['label']:<16} made {e['created_at']}, {gone}")
    for c in ceremonies:
        typer.echo(f"ceremony {c['id']} {c['kind']:<11} {c['state']}")


@keys_app.command("rotate")
@fail_cleanly
def keys_rotate(
    kind: Annotated[str, typer.Option("--kind", help="kek, data, fingerprint or audit")],
    officer: Officer = "officer-alice",
    cert: CertOpt = None,
    key: KeyOpt = None,
) -> None:
    """Propose a rotation. It runs once enough other officers approve it."""
    with admin_client(officer, cert, key) as client:
        _show_ceremony(admin_call(client, "POST", "/v1/admin/keys/rotations", {"kind": kind}))


@keys_app.command("register")
@fail_cleanly
def keys_register(
    label: Annotated[str, typer.Option("--label", help="the token label, e.g. cofre-kek-v2")],
    cka_id: Annotated[str, typer.Option("--cka-id", help="its CKA_ID (cofre hsm status)")],
    check: Annotated[str, typer.Option("--check", help="its check value (cofre hsm status)")],
    officer: Officer = "officer-alice",
    cert: CertOpt = None,
    key: KeyOpt = None,
) -> None:
    """Propose that LABEL is the token key with this CKA_ID and check value (a
    `register` ceremony, once enough other officers approve it): the key registry then
    takes it over any unsigned record of the label (docs/key-ceremony.md)."""
    body = {"kind": "register", "label": label, "cka_id": cka_id, "check": check}
    with admin_client(officer, cert, key) as client:
        _show_ceremony(admin_call(client, "POST", "/v1/admin/keys/rotations", body))


@keys_app.command("approve")
@fail_cleanly
def keys_approve(
    ceremony_id: CeremonyId,
    officer: Officer = "officer-bob",
    cert: CertOpt = None,
    key: KeyOpt = None,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            help="The rotation you mean to approve (kek, data, fingerprint or audit): "
            "nothing is signed when the ceremony is another kind.",
        ),
    ] = None,
    label: Annotated[
        str | None,
        typer.Option(
            "--label",
            help="For a register ceremony, the label you mean to register (cofre-kek-v2): "
            "nothing is signed when it registers another.",
        ),
    ] = None,
) -> None:
    """Approve a proposal (you cannot approve your own). Shows the ceremony first; at a
    terminal, asks before signing unless --kind names what it is."""
    with admin_client(officer, cert, key) as client:
        path = f"/v1/admin/keys/rotations/{ceremony_id}"
        # What the officer's token is about to sign for: an id alone says nothing of the
        # rotation behind it (the ceremony review: `keys approve` signed blind).
        shown = admin_call(client, "GET", path)
        _show_ceremony(shown)
        if kind is not None and kind != shown["kind"]:
            typer.echo(
                f"error: ceremony {ceremony_id} rotates the {shown['kind']} key, not the "
                f"{kind} key: not approved",
                err=True,
            )
            raise typer.Exit(1)
        named = (shown.get("registers") or {}).get("label")
        if label is not None and label != named:  # atk49o: what a registration registers
            typer.echo(
                f"error: ceremony {ceremony_id} registers {named or 'no label'}, not "
                f"{label}: not approved",
                err=True,
            )
            raise typer.Exit(1)
        if kind is None and sys.stdin.isatty() and not typer.confirm("Approve it?"):
            raise typer.Exit(1)
        _show_ceremony(admin_call(client, "POST", f"{path}/approve"))


@keys_app.command("cancel")
@fail_cleanly
def keys_cancel(
    ceremony_id: CeremonyId,
    officer: Officer = "officer-alice",
    cert: CertOpt = None,
    key: KeyOpt = None,
) -> None:
    """Cancel a pending proposal."""
    _decide(ceremony_id, "cancel", officer, cert, key)


@keys_app.command("status")
@fail_cleanly
def keys_status(
    ceremony_id: CeremonyId,
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


@keys_app.command("acknowledge-custody")
@fail_cleanly
def keys_acknowledge_custody(
    officer: Officer = "officer-alice",
    cert: CertOpt = None,
    key: KeyOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="Sign without asking.")] = False,
) -> None:
    """Sign, with your own token key, that you are a custodian of the keys Cofre uses and
    accept the responsibilities (PCI DSS 3.7.8). The vault checks it and records
    it in the audit log; evidence bundles carry it."""
    import base64

    from cofre.errors import ConfigurationError
    from cofre_cli._shared import cli_settings
    from cofre_cli.officer_token import find_token, signer_for
    from vault.custody import is_custody_statement

    token = find_token(cli_settings(), officer)
    if token is None:
        raise ConfigurationError(f"no token for {officer}: the statement is signed with it")
    with admin_client(officer, cert, key) as client:
        statement = admin_call(client, "GET", "/v1/admin/keys/custody/statement")["statement"]
        if not isinstance(statement, str) or not is_custody_statement(statement):
            # The token key is the officer's second factor too: signing what a vault node
            # sends would sign a ceremony action for whoever controls it (review 35).
            raise ConfigurationError(
                "the vault sent something that is not a key custody statement: not signed"
            )
        typer.echo(statement)
        if not yes and not typer.confirm("Sign this statement with your token?"):
            raise typer.Exit(1)
        signature = base64.b64encode(signer_for(token).sign(statement.encode())).decode()
        body = {"statement": statement, "signature": signature}
        recorded = admin_call(client, "POST", "/v1/admin/keys/custody", body)
    typer.echo(f"custody acknowledged by {recorded['identity']} (key {recorded['keyid']})")
