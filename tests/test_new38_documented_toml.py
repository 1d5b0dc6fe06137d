"""Every `cofre.toml` the README and docs/ show loads as Cofre's settings.

tests/test_documented_interface.py pins the `COFRE_*` variables; a reader who writes the
file instead copies the ```toml blocks (docs/cloudhsm.md's `[hsm]` table, the README's
`[[audit.witnesses]]`). A block is a `cofre.toml` when one of its top-level keys is a
setting; then every key in it must be one, with a value of the right type (session 38:
nothing pinned these blocks, so a renamed key would have left a copied file refused).
Policy files (`[identities…]`, `[relay_routes…]`) and `cofre infra`'s file are others.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from cofre.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```toml\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _settings_blocks() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            data = tomllib.loads(match.group(1))
            if set(data) & set(Settings.model_fields):
                found.append((f"{path.name}:{line}", data))
    return found


BLOCKS = _settings_blocks()


def test_the_documents_still_show_a_cofre_toml() -> None:
    assert len(BLOCKS) >= 1  # docs/cloudhsm.md's [hsm] table at least


@pytest.mark.parametrize(("where", "data"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_every_documented_cofre_toml_block_is_settings(where: str, data: dict[str, Any]) -> None:
    unknown = sorted(set(data) - set(Settings.model_fields))
    assert unknown == [], f"{where}: {unknown} are no settings"
    for name, value in data.items():
        annotation = Settings.model_fields[name].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            annotation.model_validate(value)  # extra="forbid": a misspelt key raises
