"""Known-answer vectors, loaded from data files under tests/vectors/ (never inline)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def load_json(relative: str) -> Any:
    return json.loads((VECTORS / relative).read_text(encoding="utf-8"))


def ff1_samples() -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = load_json("ff1_nist_samples.json")["samples"]
    return samples


def rfc9162_cases(kind: str) -> list[tuple[str, dict[str, Any]]]:
    """Return (name, case) for every JSON file under rfc9162/`kind`/, sorted by name."""
    root = VECTORS / "rfc9162" / kind
    return [
        (str(path.relative_to(root)), json.loads(path.read_text(encoding="utf-8")))
        for path in sorted(root.rglob("*.json"))
    ]


def c2sp_notes() -> dict[str, Any]:
    """Published signed-note, checkpoint and cosignature examples (vectors/c2sp/)."""
    notes: dict[str, Any] = load_json("c2sp/notes.json")
    return notes
