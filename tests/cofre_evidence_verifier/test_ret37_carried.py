"""Check 6d on registrations retention carried forward (session 37), on synthetic
bundles: a carry is accepted only with its original proven in `audit/carried.jsonl`.
The end-to-end case (a real retire on PostgreSQL, the archive in moto's S3, the
exporter and `cofre-verify`) is tests/audit/test_ret37_carried_registrations.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cofre_evidence_verifier.merkle import leaf_hash
from cofre_evidence_verifier.report import Report
from cofre_evidence_verifier.verify import verify_bundle
from tests.cofre_evidence_verifier.test_reg37_version_one import DAY, _hsm_init, _register
from tests.support.evidence_bundles import (
    ORIGIN,
    Bundle,
    b64,
    build,
    cutoff,
    day_log,
    inclusion,
)

CARRIED = "audit/carried.jsonl"


def _carried_log() -> list[str]:
    """`cofre hsm init` (the KEK's registration at leaf 1), a day, then the KEK's
    registration carried forward at leaf 12, as `cofre audit retire` writes it."""
    log = [*_hsm_init(), *day_log(10, DAY)]
    log.insert(12, _register("cofre-kek-v1", "cofre hsm init", "04:30:00", carried_forward_from=1))
    return log


def _row(log: list[str], index: int) -> dict[str, Any]:
    """The original at `index` with its proof in the bundle's head (`build` appends the
    export's cutoff entry and covers it)."""
    leaves = [leaf_hash(p.encode()) for p in [*log, cutoff()]]
    return {
        "index": index,
        "payload": log[index],
        "proof": [b64(h) for h in inclusion(leaves, index)],
    }


def _verify(bundle: Bundle, tmp_path: Path) -> Report:
    path = bundle.write(tmp_path / "b.tar.gz")
    return verify_bundle(path, bundle.key.pem, unsafe_no_witnesses=True, origin=ORIGIN)


def _problems(report: Report) -> list[str]:
    return [p for p in report.problems if p.startswith("key registrations:")]


def test_a_carry_with_its_proven_original_verifies(tmp_path: Path) -> None:
    log = _carried_log()
    bundle = build(log, 8, len(log))
    bundle.set_jsonl(CARRIED, [_row(log, 1)])
    report = _verify(bundle, tmp_path)
    assert report.ok, report.problems
    assert any("carried forward by retention from entry 1" in c for c in report.checks)


@pytest.mark.parametrize(
    ("tamper", "why"),
    [
        # Another payload under the original's proof: not the log's entry 1.
        ("payload", "entry 1 is not in the log (its inclusion proof in signed head"),
        # The original's payload with a proof of another leaf.
        ("proof", "entry 1 is not in the log (its inclusion proof in signed head"),
        # The exporter could not read it: fails closed, saying why.
        ("unavailable", "the exporter could not read entry 1: no archive configured"),
        # Nothing about it in the bundle.
        ("missing", "the bundle does not carry entry 1 with its inclusion proof"),
    ],
)
def test_a_carry_whose_original_is_not_proven_fails(tmp_path: Path, tamper: str, why: str) -> None:
    log = _carried_log()
    bundle = build(log, 8, len(log))
    row = _row(log, 1)
    if tamper == "payload":
        row["payload"] = log[1].replace('"check":"x"', '"check":"y"')
    elif tamper == "proof":
        row["proof"] = _row(log, 3)["proof"]
    elif tamper == "unavailable":
        row = {"index": 1, "unavailable": "no archive configured (COFRE_ARCHIVE__BUCKET)"}
    # A second line for the same leaf never replaces the first.
    rows = [] if tamper == "missing" else [row, _row(log, 1)]
    bundle.set_jsonl(CARRIED, rows)
    report = _verify(bundle, tmp_path)
    assert not report.ok
    [problem] = _problems(report)
    assert why in problem, problem
    assert "entry 12 registers cofre-kek-v1, carried forward by retention from entry 1" in problem


@pytest.mark.parametrize(
    ("said", "ok"),
    [("2026-03-01T00:00:00.000000Z", True), ("2026-03-01T04:30:00.000000Z", False)],
    ids=["the-originals-time", "its-own-time"],
)
def test_a_carry_says_when_its_original_was_registered(tmp_path: Path, said: str, ok: bool) -> None:
    """Session 49 (rev49): the vault's cryptoperiod monitor dates a key by its copy's
    ``registered_at``. Check 6d accepts the original's time there and fails any other:
    a later one restarts the key's cryptoperiod."""
    log = [*_hsm_init(), *day_log(10, DAY)]
    copy = _register(
        "cofre-kek-v1", "cofre hsm init", "04:30:00", carried_forward_from=1, registered_at=said
    )
    log.insert(12, copy)
    bundle = build(log, 8, len(log))
    bundle.set_jsonl(CARRIED, [_row(log, 1)])
    report = _verify(bundle, tmp_path)
    assert report.ok is ok, report.problems
    if not ok:
        [problem] = _problems(report)
        assert problem.endswith(
            f"it says the key was registered at {said!r}, where entry 1 says "
            "'2026-03-01T00:00:00.000000Z': the key's cryptoperiod restarted"
        ), problem
