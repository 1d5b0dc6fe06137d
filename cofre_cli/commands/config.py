"""`cofre config`: inspect the effective configuration.

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

import json

import typer

from cofre_cli._shared import cli_settings, fail_cleanly

config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)


@config_app.command("show")
@fail_cleanly
def config_show() -> None:
    """Print the effective configuration as JSON, secrets replaced by asterisks."""
    typer.echo(json.dumps(cli_settings().redacted(), indent=2))
