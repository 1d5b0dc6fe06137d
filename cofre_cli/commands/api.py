"""`cofre api`: the vault API's OpenAPI document.

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

api_app = typer.Typer(help="The vault API: its OpenAPI document.", no_args_is_help=True)


@api_app.command("openapi")
def api_openapi(
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout.")] = None,
) -> None:
    """Print the API's OpenAPI document (docs/openapi.json is this output)."""
    from api.app import openapi_document

    text = json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
