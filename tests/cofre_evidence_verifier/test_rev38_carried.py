"""Review rev38 of ret37's `audit/carried.jsonl`: can a forged file make a bundle
VERIFY that should fail? Held, on synthetic bundles (the end-to-end retire is
tests/audit/test_ret37_carried_registrations.py): an original's proof is checked in
the covering head the bundle signs, never in a tree size the file names, and a carry
copies its original's identity or fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from cofre_evidence_verifier.merkle import leaf_hash
from tests.cofre_evidence_verifier.test_ret37_carried import (
    CARRIED,
    _carried_log,
    _problems,
    _row,
    _verify,
)
from tests.support.evidence_bundles import b64, build, inclusion


@pytest.mark.parametrize("size", [2, 12], ids=["the tree at entry 1", "before the carry"])
def test_a_proof_of_the_original_in_another_tree_size_fails(tmp_path: Path, size: int) -> None:
    """The original genuine, its proof genuine too, but in a smaller tree (one the log
    did hold): the file names no size the verifier takes."""
    log = _carried_log()
    bundle = build(log, 8, len(log))
    leaves = [leaf_hash(p.encode()) for p in log[:size]]
    row = {"index": 1, "payload": log[1], "proof": [b64(h) for h in inclusion(leaves, 1)]}
    bundle.set_jsonl(CARRIED, [{**row, "tree_size": size}])
    report = _verify(bundle, tmp_path)
    assert not report.ok
    [problem] = _problems(report)
    assert "entry 1 is not in the log" in problem, problem


def test_a_carry_naming_its_own_leaf_as_the_original_fails(tmp_path: Path) -> None:
    """The carry at leaf 12 naming leaf 12, with that leaf's own proof in the file: a
    copy of itself is no copy of an earlier proven registration."""
    log = _carried_log()
    carry = log[12].replace('"carried_forward_from":1', '"carried_forward_from":12')
    assert carry != log[12]
    own = [*log[:12], carry, *log[13:]]
    bundle = build(own, 8, len(own))
    bundle.set_jsonl(CARRIED, [_row(own, 12)])
    report = _verify(bundle, tmp_path)
    assert not report.ok
    [problem] = _problems(report)
    assert "does not lie before it" in problem, problem
