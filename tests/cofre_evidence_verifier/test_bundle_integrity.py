"""Integrity attacks on the offline verifier by an operator who holds the audit key (the
HSM PIN) but gets witness cosignatures only on the genuine log's checkpoints (review 29).
Each bundle is signed and witnessed; the verifier must still say FAILED."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from cofre_evidence_verifier.entries import rebuild_root
from cofre_evidence_verifier.errors import NoteError, ProofError
from cofre_evidence_verifier.merkle import leaf_hash
from cofre_evidence_verifier.note import CosignerKey, NoteSignature, parse_note
from cofre_evidence_verifier.report import Report
from cofre_evidence_verifier.verify import verify_bundle
from cofre_evidence_verifier.witnesses import read_witness_keys
from tests.support.evidence_bundles import (
    ORIGIN,
    AuditKey,
    Bundle,
    build,
    day_log,
    head_json,
    mth,
    payload,
    witness,
)


def _verify(bundle: Bundle, tmp_path: Path, w: CosignerKey) -> Report:
    return verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        bundle.key.pem,
        witness_keys=[w.verifier_key()],
        origin=ORIGIN,
    )


def test_a_genuine_bundle_verifies(tmp_path: Path) -> None:
    w = witness()
    report = _verify(build(day_log(20), 3, 20, witnesses=[w]), tmp_path, w)
    assert report.ok, report.problems


# --- H1: the entries must lie inside the covering head's tree --------------------------
def test_entries_beyond_the_covering_head_are_not_accepted(tmp_path: Path) -> None:
    w = witness()
    log = day_log(20)
    # The covering head is the genuine, witnessed head of size 15; entries 15..19 are
    # made up, in no signed tree.
    fake = [
        (i, payload("key.rotation.approve", f"2026-03-01T20:00:{i:02d}.000000Z"))
        for i in range(15, 20)
    ]
    bundle = build(
        log, 3, 20, size=15, witnesses=[w], entries=[(i, log[i]) for i in range(3, 15)] + fake
    )
    report = _verify(bundle, tmp_path, w)
    assert not report.ok
    assert any("beyond the covering head" in p for p in report.problems), report.problems


def test_an_entry_index_outside_the_tree_fails(tmp_path: Path) -> None:
    w = witness()
    log = day_log(20)
    extra = (25, payload("tokenize", "2026-03-01T21:00:00.000000Z"))
    bundle = build(log, 3, 20, witnesses=[w], entries=[*((i, log[i]) for i in range(3, 20)), extra])
    report = _verify(bundle, tmp_path, w)
    assert not report.ok
    assert any("entry 25" in p for p in report.problems), report.problems


def test_a_bundle_of_no_entries_fails(tmp_path: Path) -> None:
    w = witness()
    report = _verify(build(day_log(20), 20, 20, witnesses=[w]), tmp_path, w)
    assert not report.ok
    assert any("no entries" in p for p in report.problems), report.problems


# --- L1: rebuilding the root is linear in the bundle's size -----------------------------
def test_rebuilding_the_root_is_not_quadratic() -> None:
    """N level-0 "subtree" hashes before N entries (a valid, if unusual, encoding of the
    same tree) cost N^2 steps when each subtree hash was compared with every leaf: at
    N = 20,000 about 20 s, which an operator can push to hours."""
    n = 20_000
    leaves = [leaf_hash(str(i).encode()) for i in range(2 * n)]
    started = time.perf_counter()
    root = rebuild_root(
        {(0, i): leaves[i] for i in range(n)}, {i: leaves[i] for i in range(n, 2 * n)}, 2 * n
    )
    assert time.perf_counter() - started < 3
    assert root == mth(leaves)


def test_a_subtree_hash_over_a_leaf_of_the_period_is_refused() -> None:
    leaves = [leaf_hash(str(i).encode()) for i in range(8)]
    with pytest.raises(ProofError, match="overlaps"):
        rebuild_root(
            {(2, 0): mth(leaves[:4])}, {2: leaves[2], **{i: leaves[i] for i in range(4, 8)}}, 8
        )


# --- L4: the covering root the summary shows is the signed head's -----------------------
def test_the_covering_root_shown_in_the_summary_is_checked(tmp_path: Path) -> None:
    w = witness()
    bundle = build(day_log(20), 3, 20, witnesses=[w])
    bundle.manifest["covering_head"]["root_hash"] = "A" * 43 + "="
    report = _verify(bundle, tmp_path, w)
    assert not report.ok
    assert any("covering_head.root_hash" in p for p in report.problems), report.problems


# --- L3: two signed trees of one size are a fork ----------------------------------------
def test_two_signed_trees_of_the_same_size_are_a_fork(tmp_path: Path) -> None:
    """Two heads of the covering size signed by the audit key with different roots: a
    split view the vault showed someone. The verifier kept the last one by size."""
    w = witness()
    bundle = build(day_log(20), 3, 20, witnesses=[w])
    genuine = bundle.jsonl("audit/heads.jsonl")[0]
    other = hashlib.sha256(b"the other tree").digest()
    fork = head_json(bundle.key, genuine["tree_size"], other)
    bundle.set_jsonl("audit/heads.jsonl", [fork, genuine])
    report = _verify(bundle, tmp_path, w)
    assert not report.ok
    assert any("fork" in p for p in report.problems), report.problems


def test_the_same_head_twice_is_no_fork(tmp_path: Path) -> None:
    w = witness()
    bundle = build(day_log(20), 3, 20, witnesses=[w])
    head = bundle.jsonl("audit/heads.jsonl")[0]
    bundle.set_jsonl("audit/heads.jsonl", [head, head])
    report = _verify(bundle, tmp_path, w)
    assert report.ok, report.problems


# --- L2: only cosignature/v1 keys are witnesses, and each key counts once ---------------
def test_one_witness_pinned_twice_is_no_quorum_of_two(tmp_path: Path) -> None:
    w = witness()
    bundle = build(day_log(20), 3, 20, witnesses=[w])
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        bundle.key.pem,
        witness_keys=[w.verifier_key(), w.verifier_key()],
        quorum=2,
        origin=ORIGIN,
    )
    assert not report.ok


def test_one_witness_key_under_two_names_is_no_quorum_of_two(tmp_path: Path) -> None:
    """A cosignature does not sign its key's name: the same key pinned under a second
    name verifies a copy of the line relabelled with that name."""
    w = witness("witness.example/w1")
    alias = CosignerKey("witness.example/w2", w._private)
    bundle = build(day_log(20), 3, 20, witnesses=[w])
    _text, signatures = parse_note(bundle.files["audit/checkpoint.note"])
    relabelled = NoteSignature(
        alias.name, alias.verifier_key().key_id, signatures[-1].signature
    ).line()
    bundle.files["audit/checkpoint.note"] += relabelled.encode()
    keys = [w.verifier_key(), alias.verifier_key()]
    assert verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"), bundle.key.pem, witness_keys=keys, origin=ORIGIN
    ).ok
    report = verify_bundle(
        tmp_path / "b.tar.gz", bundle.key.pem, witness_keys=keys, quorum=2, origin=ORIGIN
    )
    assert not report.ok
    assert any("the same key as" in p for p in report.problems), report.problems


def test_the_vaults_own_key_is_not_a_witness(tmp_path: Path) -> None:
    bundle = build(day_log(20), 3, 20, witnesses=[])  # no cosignature at all
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        bundle.key.pem,
        witness_keys=[bundle.key.vkey()],
        origin=ORIGIN,
    )
    assert not report.ok
    assert any("cosignature/v1" in p for p in report.problems), report.problems


def test_only_cosignature_v1_keys_are_read_as_witness_keys() -> None:
    w = witness()
    assert read_witness_keys([w.verifier_key().encode()]) == [w.verifier_key()]
    for vkey in (w.note_verifier_key(), AuditKey().vkey()):
        with pytest.raises(NoteError, match="cosignature/v1"):
            read_witness_keys([vkey.encode()])
