"""The `cofre` command line: one CLI for developers, operators, officers and auditors.

IN PCI SCOPE (wiring). Secrets are never options: the HSM PIN comes from
``COFRE_HSM__PIN`` or ``COFRE_HSM__PIN_FILE`` (see `cofre.settings`).
"""

from __future__ import annotations

import inspect
import os
from typing import Annotated

import typer

from cofre import __version__
from cofre_cli.commands import (
    api,
    audit,
    config,
    db,
    evidence,
    hsm,
    infra,
    keys,
    mfa,
    pki,
    serve,
    tokens,
    witness,
)

app = typer.Typer(
    name="cofre",
    help="Cofre: a PCI-DSS tokenization vault (format-preserving tokens, HSM keys, audit).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# The groups are added in the order `cofre --help` has always listed them.
app.add_typer(hsm.hsm_app, name="hsm")
app.add_typer(audit.audit_app, name="audit")
app.add_typer(config.config_app, name="config")
app.add_typer(api.api_app, name="api")
app.add_typer(keys.keys_app, name="keys")
app.add_typer(mfa.mfa_app, name="mfa")
app.add_typer(evidence.evidence_app, name="evidence")
app.add_typer(infra.infra_app, name="infra")
app.add_typer(pki.pki_app, name="pki")
app.add_typer(db.db_app, name="db")
app.add_typer(tokens.tokens_app, name="tokens")
app.add_typer(witness.witness_app, name="witness")
app.command("dev")(serve.dev_command)
app.command("serve")(serve.serve_command)


def _one_line_summaries(group: typer.Typer) -> None:
    """List each command on one row of its group's help. typer's rich help lists a
    command by its docstring's first paragraph but keeps that paragraph's line breaks
    (its own page joins them), so `cofre --help` broke 25 rows mid-sentence (session
    38): give every command without a `short_help` that paragraph on one line."""
    for info in group.registered_commands:
        text = info.help or (info.callback.__doc__ if info.callback else None) or ""
        if info.short_help is None and text:
            info.short_help = " ".join(inspect.cleandoc(text).split("\n\n")[0].split())
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _one_line_summaries(sub.typer_instance)


_one_line_summaries(app)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"cofre {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            callback=_version_callback,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Cofre: a PCI-DSS tokenization vault."""
    # Review 35: the TLS contexts Cofre makes write no key log (`cofre.tls`), but a
    # library's own do (botocore's: the STS credentials behind RDS IAM tokens, the audit
    # archive's object store), copying SSLKEYLOGFILE into theirs. Dropped before any
    # command runs, so neither they nor the processes this one starts see it.
    os.environ.pop("SSLKEYLOGFILE", None)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="cofre")


if __name__ == "__main__":  # pragma: no cover
    main()
