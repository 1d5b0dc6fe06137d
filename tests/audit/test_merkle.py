"""RFC 9162 Merkle proofs: every transparency-dev/merkle vector, and hypothesis over sizes."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.errors import ProofError
from audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    LeafLevels,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from tests.support.vectors import (
    check_rfc9162_consistency,
    check_rfc9162_inclusion,
    rfc9162_cases,
)

INCLUSION = rfc9162_cases("inclusion")
CONSISTENCY = rfc9162_cases("consistency")


def test_vectors_loaded() -> None:
    assert len(INCLUSION) > 60
    assert len(CONSISTENCY) > 60


@pytest.mark.parametrize(("name", "case"), INCLUSION, ids=[n for n, _ in INCLUSION])
def test_inclusion_vectors(name: str, case: dict[str, Any]) -> None:
    check_rfc9162_inclusion(case, verify_inclusion, ProofError)


@pytest.mark.parametrize(("name", "case"), CONSISTENCY, ids=[n for n, _ in CONSISTENCY])
def test_consistency_vectors(name: str, case: dict[str, Any]) -> None:
    check_rfc9162_consistency(case, verify_consistency, ProofError)


def test_rfc_hashing() -> None:
    assert root_hash([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    a, b, c = (leaf_hash(bytes([i])) for i in range(3))
    assert root_hash([a]) == a
    assert root_hash([a, b]) == node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert root_hash([a, b, c]) == node_hash(node_hash(a, b), c)


def _reference_root(leaves: list[bytes]) -> bytes:
    """The RFC's recursive MTH definition, literally."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(_reference_root(leaves[:k]), _reference_root(leaves[k:]))


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 1000), st.data())
def test_every_inclusion_proof_verifies(size: int, data: st.DataObject) -> None:
    leaves = _leaves(size)
    root = root_hash(leaves)
    assert root == _reference_root(leaves)
    index = data.draw(st.integers(0, size - 1))
    proof = inclusion_proof(leaves, index)
    verify_inclusion(leaves[index], index, size, proof, root)
    if proof:
        position = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        broken = list(proof)
        broken[position] = bytes(
            x ^ (1 << (bit % 8)) if j == bit // 8 else x for j, x in enumerate(broken[position])
        )
        with pytest.raises(ProofError):
            verify_inclusion(leaves[index], index, size, broken, root)
    with pytest.raises(ProofError):
        verify_inclusion(leaf_hash(b"other"), index, size, proof, root)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 1000), st.data())
def test_every_consistency_proof_verifies(size2: int, data: st.DataObject) -> None:
    leaves = _leaves(size2)
    size1 = data.draw(st.integers(1, size2))
    root1, root2 = root_hash(leaves[:size1]), root_hash(leaves)
    proof = consistency_proof(leaves, size1)
    verify_consistency(size1, size2, proof, root1, root2)
    if proof:
        position = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        broken = list(proof)
        broken[position] = bytes(
            x ^ (1 << (bit % 8)) if j == bit // 8 else x for j, x in enumerate(broken[position])
        )
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, broken, root1, root2)
    if size1 < size2:
        with pytest.raises(ProofError):
            verify_consistency(
                size1, size2, proof, root1, root_hash([*leaves[:-1], leaf_hash(b"x")])
            )


def test_every_index_small_trees() -> None:
    for size in range(1, 70):
        leaves = _leaves(size)
        root = root_hash(leaves)
        for index in range(size):
            verify_inclusion(leaves[index], index, size, inclusion_proof(leaves, index), root)
        for size1 in range(1, size + 1):
            verify_consistency(
                size1, size, consistency_proof(leaves, size1), root_hash(leaves[:size1]), root
            )


def test_bad_arguments() -> None:
    leaves = _leaves(4)
    with pytest.raises(ProofError):
        inclusion_proof(leaves, 4)
    with pytest.raises(ProofError):
        inclusion_proof(leaves, -1)
    with pytest.raises(ProofError):
        consistency_proof(leaves, 0)
    with pytest.raises(ProofError):
        consistency_proof(leaves, 5)
    with pytest.raises(ProofError, match="negative"):
        verify_consistency(-1, 2, [], b"", b"")


@given(st.integers(min_value=0, max_value=300))
@settings(max_examples=80, deadline=None)
def test_compact_range_builds_the_rfc_tree(size: int) -> None:
    """Appending leaf by leaf gives the RFC 9162 root at every size, and every complete
    subtree it reports is the one the full tree has."""
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    levels = LeafLevels(leaves)
    tree = CompactRange()
    assert tree.root() == root_hash([])
    for count, leaf in enumerate(leaves, 1):
        made = tree.append(leaf)
        assert made[0] == (0, count - 1, leaf)
        for level, index, value in made:
            assert levels.complete_subtree(level, index) == value
        assert tree.size == count
        assert tree.root() == root_hash(leaves[:count])
    if size:
        border = {
            level: levels.complete_subtree(level, index)
            for level, index in CompactRange.border_positions(size)
        }
        assert CompactRange(size, border).root() == root_hash(leaves)


def test_compact_range_refuses_misaligned_subtrees_and_bad_borders() -> None:
    tree = CompactRange()
    tree.append(leaf_hash(b"a"))
    with pytest.raises(ValueError, match="cannot start at leaf 1"):
        tree.append_subtree(1, leaf_hash(b"b"))
    with pytest.raises(ValueError, match="one hash per set bit"):
        CompactRange(3, {0: leaf_hash(b"a")})
