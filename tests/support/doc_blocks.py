"""The commands a document's fenced blocks show, as a reader types them: a doc-driven
test runs them so the page cannot drift from what the programs do (session 40)."""

from __future__ import annotations

import shlex
from pathlib import Path

__all__ = ["DOCS", "fenced_commands", "split_assignments"]

DOCS = Path(__file__).resolve().parents[2] / "docs"


def fenced_commands(document: Path, after: str, language: str = "sh") -> list[tuple[str, str]]:
    """(command, comment) for each line of the first ```` ```language ```` block of
    `document` after the text `after`: backslash continuations joined, a line that is
    only a comment given as ("", the text after its `#`, indent kept: the page's
    sample output is indented, its prose is not), the comment after `  #` kept apart (what the
    page says the command prints or does). Raises `AssertionError` when there is none."""
    text = document.read_text(encoding="utf-8")
    assert after in text, f"{document.name} no longer says {after!r}"
    rest = text.split(after, 1)[1]
    fence = f"```{language}\n"
    assert fence in rest, f"no {language} block after {after!r} in {document.name}"
    body = rest.split(fence, 1)[1].split("\n```", 1)[0]
    lines: list[tuple[str, str]] = []
    pending = ""
    for raw in body.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = pending + raw
        pending = ""
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            lines.append(("", stripped[1:].rstrip()))  # "#   output" keeps its indent
            continue
        command, _, comment = line.partition("  #")
        lines.append((command.strip(), comment.strip()))
    return lines


def split_assignments(command: str) -> tuple[dict[str, str], list[str]]:
    """`VAR=value ... program args` as (the variables, the words from the program on)."""
    words = shlex.split(command)
    assigned: dict[str, str] = {}
    while words and "=" in words[0] and words[0].split("=", 1)[0].isidentifier():
        name, _, value = words.pop(0).partition("=")
        assigned[name] = value
    return assigned, words
