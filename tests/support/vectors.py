"""Known-answer vectors, loaded from data files under tests/vectors/ (never inline)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def load_json(relative: str) -> Any:
    return json.loads((VECTORS / relative).read_text(encoding="utf-8"))


def ff1_samples() -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = load_json("ff1_nist_samples.json")["samples"]
    return samples


def ff1_acvp_cases() -> list[dict[str, Any]]:
    """NIST's ACVP FF1 test cases (vectors/ff1_acvp_samples.json), one dict per case with
    its group's direction, key length, radix and alphabet."""
    data: dict[str, Any] = load_json("ff1_acvp_samples.json")
    cases = []
    for group in data["groups"]:
        for tc_id, key, tweak, pt, ct in group["tests"]:
            cases.append(
                {
                    "tcId": tc_id,
                    "direction": group["direction"],
                    "keyLen": group["keyLen"],
                    "radix": group["radix"],
                    "alphabet": group["alphabet"],
                    "key": key,
                    "tweak": tweak,
                    "pt": pt,
                    "ct": ct,
                }
            )
    return cases


def rfc9162_cases(kind: str) -> list[tuple[str, dict[str, Any]]]:
    """Return (name, case) for every JSON file under rfc9162/`kind`/, sorted by name."""
    root = VECTORS / "rfc9162" / kind
    return [
        (str(path.relative_to(root)), json.loads(path.read_text(encoding="utf-8")))
        for path in sorted(root.rglob("*.json"))
    ]


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def check_rfc9162_inclusion(
    case: dict[str, Any], verify: Callable[..., object], error: type[Exception]
) -> None:
    """Run one transparency-dev inclusion vector through `verify` (the vault's prover
    package or the standalone verifier): it passes, or raises `error` where the vector
    wants an error."""
    proof = [_b64(p) for p in case["proof"] or []]
    args = (_b64(case["leafHash"]), case["leafIdx"], case["treeSize"], proof, _b64(case["root"]))
    if case["wantErr"]:
        with pytest.raises(error):
            verify(*args)
    else:
        verify(*args)


def check_rfc9162_consistency(
    case: dict[str, Any], verify: Callable[..., object], error: type[Exception]
) -> None:
    """`check_rfc9162_inclusion` for a consistency vector."""
    proof = [_b64(p) for p in case["proof"] or []]
    args = (case["size1"], case["size2"], proof, _b64(case["root1"]), _b64(case["root2"]))
    if case["wantErr"]:
        with pytest.raises(error):
            verify(*args)
    else:
        verify(*args)


def c2sp_notes() -> dict[str, Any]:
    """Published signed-note, checkpoint and cosignature examples (vectors/c2sp/)."""
    notes: dict[str, Any] = load_json("c2sp/notes.json")
    return notes
