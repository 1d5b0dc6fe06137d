"""`cofre mfa`: the officer's own token key, the second factor of key ceremonies and
evidence exports.

IN PCI SCOPE (authentication). The PIN comes from ``COFRE_OFFICER_TOKEN__PIN_FILE`` (or
the dev token's file) or a prompt, never an option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cofre.errors import ConfigurationError
from cofre_cli._shared import cli_settings, fail_cleanly

mfa_app = typer.Typer(
    help="Your own token key that signs key ceremony actions and evidence exports (MFA).",
    no_args_is_help=True,
)


# `--as` names the token here: `mfa init` sends no request, so no certificate (the shared
# `Officer` option's help offered --cert/--key, which this command does not take).
TokenOwner = Annotated[
    str,
    typer.Option(
        "--as",
        help="Your identity NAME: its token is COFRE_OFFICER_TOKEN__TOKEN_LABEL with {name} "
        "replaced by NAME, or in dev NAME's token under officers/.",
        envvar="COFRE_OFFICER",
    ),
]


@mfa_app.command("init")
@fail_cleanly
def mfa_init(
    officer: TokenOwner = "officer-alice",
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write the public key (PEM) here.")
    ] = None,
) -> None:
    """Create the MFA key on your token (once; sensitive, never extractable) and print its
    public key and key id. Give the public key to the policy owner: it goes into your
    identity's `mfa_public_key` in the policy."""
    from cofre_cli.officer_token import find_token, init_key
    from vault.httpsig import jwk_thumbprint

    token = find_token(cli_settings(), officer)
    if token is None:
        raise ConfigurationError(
            f"no token for {officer}: set COFRE_OFFICER_TOKEN__TOKEN_LABEL (and __LIBRARY, "
            "__PIN_FILE), or run `cofre dev` for the dev tokens"
        )
    pem = init_key(token)
    if out is not None:
        out.write_bytes(pem)
    typer.echo(pem.decode().rstrip())
    typer.echo(f"keyid {jwk_thumbprint(pem)}")
