"""Review 30: a signed head of the period that is not a prefix of the covering head.

Check 3 verifies every head's signature and refuses two heads of one size with
different roots (a fork), and the report lists each verified head with its root. A
holder of the HSM PIN signs a head of any tree: one at a size no other head of the
bundle has, for a tree that is not the log's (a fork at that size, or the root of a
rewritten history shown to someone else), was verified and listed as one of the log's
heads. A head whose size lies within the period's entries is a prefix of the covering
head exactly when its root is the root of the first `size` leaves, which the bundle
holds (the subtree hashes before the period and the period's entries), so the
verifier now computes it and names a head that differs as a fork.
"""

from __future__ import annotations

from pathlib import Path

from cofre_evidence_verifier.merkle import leaf_hash
from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import ORIGIN, build, cutoff, day_log, head_json, mth, witness


def test_a_period_head_of_another_tree_is_a_fork(tmp_path: Path) -> None:
    """Before the fix: VERIFIED, the forged head listed among the log's heads."""
    w = witness()
    log = [*day_log(20), cutoff()]
    bundle = build(log, 3, 20, size=21, witnesses=[w])
    rewritten = [leaf_hash(p.encode()) for i, p in enumerate(log[:12]) if i != 7]
    forged = head_json(bundle.key, 11, mth(rewritten))
    bundle.set_jsonl("audit/heads.jsonl", [forged, *bundle.jsonl("audit/heads.jsonl")])
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        bundle.key.pem,
        witness_keys=[w.verifier_key()],
        origin=ORIGIN,
    )
    assert not report.ok
    assert any(
        "head 11" in p and "not a prefix of the covering head" in p for p in report.problems
    ), report.problems
    assert 11 not in [size for size, _root, _key in report.verified_heads]


def test_genuine_period_heads_verify(tmp_path: Path) -> None:
    w = witness()
    log = [*day_log(20), cutoff()]
    bundle = build(log, 3, 20, size=21, witnesses=[w])
    leaves = [leaf_hash(p.encode()) for p in log]
    heads = [head_json(bundle.key, n, mth(leaves[:n])) for n in (3, 4, 11, 19, 20)]
    bundle.set_jsonl("audit/heads.jsonl", [*heads, *bundle.jsonl("audit/heads.jsonl")])
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        bundle.key.pem,
        witness_keys=[w.verifier_key()],
        origin=ORIGIN,
    )
    assert report.ok, report.problems
    assert [size for size, _root, _key in report.verified_heads] == [3, 4, 11, 19, 20, 21]


def test_a_forged_head_at_the_periods_first_size_is_named(tmp_path: Path) -> None:
    """Size `first_index`: the prefix is the subtree hashes before the period alone."""
    w = witness()
    log = [*day_log(20), cutoff()]
    bundle = build(log, 3, 20, size=21, witnesses=[w])
    forged = head_json(bundle.key, 3, mth([leaf_hash(b"x")] * 3))
    bundle.set_jsonl("audit/heads.jsonl", [forged, *bundle.jsonl("audit/heads.jsonl")])
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        bundle.key.pem,
        witness_keys=[w.verifier_key()],
        origin=ORIGIN,
    )
    assert not report.ok
    assert any("head 3" in p for p in report.problems), report.problems
