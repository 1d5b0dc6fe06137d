"""The distribution's name is ours: `cofre` on PyPI is an unrelated 2011 project, so
neither pyproject nor any document may tell a reader to install it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_distribution_name_is_not_the_taken_one() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "cofre-vault"
    assert project["scripts"]["cofre"] == "cofre_cli.main:main"


def test_no_document_installs_the_unrelated_package() -> None:
    taken = re.compile(r"pip install cofre(?![-\w./])")
    offenders = [
        str(path.relative_to(ROOT))
        for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        if taken.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
