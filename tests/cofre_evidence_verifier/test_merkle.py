"""The standalone verifier's RFC 9162 code: every transparency-dev/merkle vector, and
property tests against the vault's own `audit.merkle` (the prover), so the two
implementations cannot drift apart."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit import merkle as vault_merkle
from cofre_evidence_verifier.errors import ProofError, VerifierError
from cofre_evidence_verifier.merkle import (
    EMPTY_ROOT,
    CompactRange,
    leaf_hash,
    node_hash,
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


def test_errors_are_value_errors_under_one_root() -> None:
    assert issubclass(ProofError, VerifierError)
    assert issubclass(ProofError, ValueError)


def _leaves(n: int) -> list[bytes]:
    return [vault_merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 600))
def test_same_hashes_and_roots_as_the_vault(size: int) -> None:
    payload = size.to_bytes(4, "big")
    assert leaf_hash(payload) == vault_merkle.leaf_hash(payload)
    leaves = _leaves(size)
    tree = CompactRange()
    for leaf in leaves:
        tree.append(leaf)
    assert tree.root() == vault_merkle.root_hash(leaves)
    if size >= 2:
        assert node_hash(leaves[0], leaves[1]) == vault_merkle.node_hash(leaves[0], leaves[1])
    if size == 0:
        assert tree.root() == EMPTY_ROOT == vault_merkle.EMPTY_ROOT


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 600), st.data())
def test_verifies_the_vaults_proofs(size: int, data: st.DataObject) -> None:
    leaves = _leaves(size)
    root = vault_merkle.root_hash(leaves)
    index = data.draw(st.integers(0, size - 1))
    verify_inclusion(leaves[index], index, size, vault_merkle.inclusion_proof(leaves, index), root)
    size1 = data.draw(st.integers(1, size))
    verify_consistency(
        size1,
        size,
        vault_merkle.consistency_proof(leaves, size1),
        vault_merkle.root_hash(leaves[:size1]),
        root,
    )
    if size1 < size:
        with pytest.raises(ProofError):
            verify_consistency(
                size1, size, vault_merkle.consistency_proof(leaves, size1), bytes(32), root
            )


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 300), st.data())
def test_compact_range_with_subtrees(size: int, data: st.DataObject) -> None:
    """Appending aligned complete subtrees gives the same root as appending their
    leaves, as the bundle verifier rebuilds a covering head."""
    leaves = _leaves(size)
    tree = CompactRange()
    while tree.size < size:
        at = tree.size
        fits = [
            level
            for level in range(size.bit_length())
            if at % (1 << level) == 0 and at + (1 << level) <= size
        ]
        level = data.draw(st.sampled_from(fits))
        tree.append_subtree(level, vault_merkle.root_hash(leaves[at : at + (1 << level)]))
    assert tree.root() == vault_merkle.root_hash(leaves)


def test_a_misaligned_subtree_is_refused() -> None:
    tree = CompactRange()
    tree.append(leaf_hash(b"a"))
    with pytest.raises(ProofError, match="cannot start at leaf 1"):
        tree.append_subtree(1, leaf_hash(b"b"))
