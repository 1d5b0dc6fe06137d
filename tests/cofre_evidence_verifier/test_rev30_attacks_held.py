"""Review 30's attacks on the evidence that found the verifier already failing closed,
kept as regression tests. The attacker holds the HSM PIN (signs anything the audit key
signs), the database and the vault node; the witnesses cosign only what extends what
they cosigned (here: only the genuine log's heads).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from cofre_evidence_verifier.errors import ProofError
from cofre_evidence_verifier.merkle import leaf_hash, node_hash, verify_inclusion
from cofre_evidence_verifier.note import CosignerKey
from cofre_evidence_verifier.report import Report
from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import (
    ORIGIN,
    AuditKey,
    Bundle,
    build,
    chained,
    cutoff,
    day_log,
    inclusion,
    mth,
    witness,
)


def _verify(bundle: Bundle, tmp_path: Path, w: CosignerKey, previous: Path | None = None) -> Report:
    return verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        bundle.key.pem,
        previous,
        witness_keys=[w.verifier_key()],
    )


def test_reordered_entries_re_signed_fail(tmp_path: Path) -> None:
    """Two entries swapped, every head and the manifest re-signed with the HSM key: the
    witness cosigned the genuine order only."""
    w, key = witness(), AuditKey()
    genuine = [*day_log(20), cutoff()]
    swapped = list(genuine)
    swapped[5], swapped[6] = swapped[6], swapped[5]
    bundle = build(swapped, 3, 20, size=21, key=key, witnesses=[])
    honest = build(genuine, 3, 20, size=21, key=key, witnesses=[w])
    bundle.files["audit/checkpoint.note"] = honest.files["audit/checkpoint.note"]
    report = _verify(bundle, tmp_path, w)
    assert not report.ok
    assert any("checkpoint.note" in p for p in report.problems), report.problems


def test_a_truncated_tail_under_an_older_witnessed_head_fails(tmp_path: Path) -> None:
    """The bundle claims the period up to its end, but stops at an older witnessed head
    (size 12): the entry after its range is dated inside the period."""
    w = witness()
    log = [*day_log(20), cutoff()]
    bundle = build(
        log,
        3,
        11,
        size=12,
        witnesses=[w],
        period=(json.loads(log[3])["time"], "2026-03-02T00:00:00.000000Z"),
    )
    report = _verify(bundle, tmp_path, w)
    assert not report.ok
    assert any("inside the period" in p for p in report.problems), report.problems


def test_the_previous_bundle_replayed_as_the_next_fails(tmp_path: Path) -> None:
    w, key = witness(), AuditKey()
    first, _second = chained(day_log(20), 10, key=key, witnesses=[w])
    previous = first.write(tmp_path / "a.tar.gz")
    report = _verify(first, tmp_path, w, previous=previous)
    assert not report.ok
    assert any("in both bundles" in p for p in report.problems), report.problems


def test_entries_spliced_from_the_next_period_fail(tmp_path: Path) -> None:
    """The second bundle's entries [10, 20) shown with the first bundle's range [0, 10):
    the root over the covering head no longer holds."""
    w, key = witness(), AuditKey()
    first, second = chained(day_log(20), 10, key=key, witnesses=[w])
    rows = second.jsonl("audit/entries.jsonl")
    first.set_jsonl(
        "audit/entries.jsonl", [{"index": i, "payload": r["payload"]} for i, r in enumerate(rows)]
    )
    report = _verify(first, tmp_path, w)
    assert not report.ok


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_a_link_member_is_refused(tmp_path: Path, kind: bytes) -> None:
    w = witness()
    bundle = build(day_log(20), 3, 20, witnesses=[w])
    bundle.resign()
    path = bundle.write(tmp_path / "b.tar.gz", resign=False)
    buffer = io.BytesIO()
    with tarfile.open(path, "r:gz") as source, tarfile.open(fileobj=buffer, mode="w:gz") as out:
        for member in source.getmembers():
            out.addfile(member, source.extractfile(member))
        link = tarfile.TarInfo("keys/inventory.json")
        link.type, link.linkname = kind, "/etc/passwd"
        out.addfile(link)
    path.write_bytes(buffer.getvalue())
    report = verify_bundle(path, bundle.key.pem, witness_keys=[w.verifier_key()], origin=ORIGIN)
    assert not report.ok
    assert any("unsafe member" in p for p in report.problems), report.problems


def test_rfc9162_edge_cases_are_refused() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(5)]
    root = mth(leaves)
    verify_inclusion(leaves[4], 4, 5, inclusion(leaves, 4), root)  # index = size - 1
    one = mth(leaves[:1])
    verify_inclusion(leaves[0], 0, 1, [], one)  # size 1: the root is the leaf
    cases = [
        (leaves[0], 0, 1, [leaves[1]], one),  # size 1 with a proof
        (leaves[0], 0, 0, [], one),  # size 0
        (leaves[4], 4, 5, [*inclusion(leaves, 4), leaves[0]], root),  # one hash too many
        (leaves[4], 4, 5, inclusion(leaves, 4)[:-1], root),  # one too few
        (leaves[4], 4, 5, [h + b"\x00" for h in inclusion(leaves, 4)], root),  # 33 bytes
        (leaves[4], 5, 5, inclusion(leaves, 4), root),  # index = size
    ]
    for leaf, index, size, proof, expected in cases:
        with pytest.raises(ProofError):
            verify_inclusion(leaf, index, size, proof, expected)
    # Domain separation: an interior node (0x01) shown as a leaf of the tree above it
    # is no leaf (0x00) of it.
    pair = node_hash(leaves[0], leaves[1])
    two = mth(leaves[:2])
    assert pair == two
    with pytest.raises(ProofError):
        verify_inclusion(leaf_hash(leaves[0] + leaves[1]), 0, 1, [], two)
