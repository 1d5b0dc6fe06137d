"""`cofre pki`: the development PKI (client certificates).

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

from typing import Annotated

import typer

from cofre_cli._shared import cli_settings, fail_cleanly

pki_app = typer.Typer(help="The development PKI (client certificates).", no_args_is_help=True)


@pki_app.command("issue-client")
@fail_cleanly
def pki_issue_client(
    name: Annotated[str, typer.Argument(help="The identity becomes spiffe://cofre/NAME.")],
) -> None:
    """Issue a dev client certificate for NAME (add NAME to the policy to grant it
    anything)."""
    from api.pki import ensure_dev_pki, issue_client

    pki = ensure_dev_pki(cli_settings().data_dir / "pki", identities=())
    path = issue_client(pki, name)
    typer.echo(f"issued {path} (identity spiffe://cofre/{name})")


@pki_app.command("list")
@fail_cleanly
def pki_list() -> None:
    """List the dev certificates: subject, SAN, expiry."""
    from api.pki import certificate_inventory

    root = cli_settings().data_dir / "pki"
    paths = sorted(p for p in root.rglob("*.pem") if not p.name.endswith("-key.pem"))
    for cert in certificate_inventory(paths):
        typer.echo(f"{cert['file']}: {cert['san'] or cert['subject']} until {cert['not_after']}")
