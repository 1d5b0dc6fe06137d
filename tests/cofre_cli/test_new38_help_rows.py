"""`cofre --help` and `cofre GROUP --help` list each command on one row.

A newcomer's first look at the CLI (session 38): typer's rich help lists a command by
its docstring's first paragraph but keeps that paragraph's line breaks (a command's own
page joins them), so `cofre --help` showed `dev` as "…key hierarchy, the" / "embedded
SQLite store…" and 25 commands broke mid-sentence the same way.
"""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cofre_cli.main import app


def _groups() -> dict[str, Any]:
    found: dict[str, Any] = {}

    def walk(command: Any, path: list[str]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands is not None:
            found[" ".join(path)] = command
            for name, sub in subcommands.items():
                walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


GROUPS = _groups()


@pytest.mark.parametrize("group", sorted(GROUPS), ids=lambda g: g or "cofre")
def test_each_command_is_listed_on_one_line(group: str) -> None:
    ragged = [
        name
        for name, command in GROUPS[group].commands.items()
        if "\n" in (command.short_help or command.help or "").split("\n\n")[0].strip()
    ]
    assert ragged == []


def test_the_top_level_help_shows_dev_in_one_sentence() -> None:
    # Wide enough for the row to fit on one line: a break inside it is the docstring's.
    shown = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "250"}).output
    assert "Cofre's key hierarchy, the embedded SQLite store" in shown
