"""RFC 9162 Merkle tree verification: leaf and node hashing, inclusion and consistency
proof verification, and a compact range to rebuild a root from leaves and subtrees.

An independent implementation of the verifying half of the vault's `audit.merkle` (the
verifier may not import the vault), tested against the same transparency-dev/merkle
vectors and cross-checked against `audit.merkle` by property tests. Hashing is RFC 9162
section 2.1 (SHA-256): a leaf is ``SHA-256(0x00 || entry)``, an interior node
``SHA-256(0x01 || left || right)``, the empty tree's root ``SHA-256("")``. The
verifiers are the RFC's algorithms (2.1.3.2, 2.1.4.2) in transparency-dev/merkle's
bit-decomposed form with its rules for malformed input: every hash is 32 bytes, a
consistency proof from the empty tree is rejected, equal sizes need an empty proof and
equal roots. They return ``None`` or raise `ProofError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

from cofre_evidence_verifier.errors import ProofError

HASH_SIZE: Final = 32
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    """Return the RFC 9162 leaf hash ``SHA-256(0x00 || entry)``."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 interior node hash ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


class CompactRange:
    """The compact range ``[0, size)`` of a Merkle tree: for every set bit L of `size`,
    the hash of the complete subtree at level L that ends the range (transparency-dev/
    merkle's `compact.Range`, restricted to ranges that start at 0)."""

    def __init__(self) -> None:
        self.size = 0
        self._border: dict[int, bytes] = {}

    def append(self, leaf: bytes) -> None:
        """Append one leaf hash."""
        self.append_subtree(0, leaf)

    def append_subtree(self, level: int, subtree: bytes) -> None:
        """Append the hash of a complete subtree of ``2**level`` leaves, which must start
        at `size` (aligned). Raises `ProofError` when it is not aligned."""
        if level < 0 or self.size % (1 << level):
            raise ProofError(f"a level-{level} subtree cannot start at leaf {self.size}")
        current, position = subtree, self.size >> level
        self.size += 1 << level
        while position & 1:
            current = node_hash(self._border.pop(level), current)
            level += 1
            position >>= 1
        self._border[level] = current

    def root(self) -> bytes:
        """The root hash of the range (the empty tree's root for size 0)."""
        root: bytes | None = None
        for level in sorted(self._border):
            root = self._border[level] if root is None else node_hash(self._border[level], root)
        return EMPTY_ROOT if root is None else root


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} has {len(value)} bytes, not {HASH_SIZE}")


def _decompose(index: int, size: int) -> tuple[int, int]:
    """Split an inclusion proof's length into its inner part (below the level where the
    paths to `index` and to the last leaf meet) and its right-border part."""
    inner = (index ^ (size - 1)).bit_length()
    border = bin(index >> inner).count("1")
    return inner, border


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, sibling in enumerate(proof):
        seed = node_hash(sibling, seed) if (index >> i) & 1 else node_hash(seed, sibling)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, sibling in enumerate(proof):
        if (index >> i) & 1:
            seed = node_hash(sibling, seed)
    return seed


def _chain_border_right(seed: bytes, proof: Sequence[bytes]) -> bytes:
    for sibling in proof:
        seed = node_hash(sibling, seed)
    return seed


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Return if `proof` shows the leaf hash `leaf` at `index` in the tree of `size` with
    `root`. Raises `ProofError` otherwise (also for an index outside the tree or a proof
    of the wrong shape)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    _check_hash(leaf, "the leaf hash")
    inner, border = _decompose(index, size)
    if len(proof) != inner + border:
        raise ProofError(f"the proof has {len(proof)} hashes; a valid one has {inner + border}")
    for position, element in enumerate(proof):
        _check_hash(element, f"proof hash {position}")
    calculated = _chain_border_right(_chain_inner(leaf, proof[:inner], index), proof[inner:])
    if calculated != root:
        raise ProofError("the inclusion proof does not lead to the expected root")


def _trivially_consistent(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> bool:
    """Decide the cases that need no hashing: True when consistent, raise when not,
    False when the proof must be checked."""
    if size1 < 0 or size2 < 0:
        raise ProofError("tree sizes cannot be negative")
    if size2 < size1:
        raise ProofError(f"size2 ({size2}) is smaller than size1 ({size1})")
    if size1 == 0:
        # The empty tree is a prefix of every tree: a proof from it proves nothing, and
        # the vectors (transparency-dev/merkle) reject it even towards another empty tree.
        raise ProofError("a consistency proof from the empty tree proves nothing")
    if size1 == size2:
        if proof:
            raise ProofError("equal sizes need an empty proof")
        if root1 != root2:
            raise ProofError("equal sizes but different roots")
        return True
    if not proof:
        raise ProofError("the consistency proof is empty")
    for position, element in enumerate(proof):
        _check_hash(element, f"proof hash {position}")
    return False


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Return if `proof` shows the tree (`size1`, `root1`) is a prefix of (`size2`,
    `root2`). Raises `ProofError` otherwise."""
    if _trivially_consistent(size1, size2, proof, root1, root2):
        return
    inner, border = _decompose(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1  # trailing zeros of size1
    inner -= shift
    # The proof starts with the root of the subtree of size 2^shift, unless size1 is
    # itself that power of two, in which case the seed is root1.
    if size1 == 1 << shift:
        seed, rest = root1, list(proof)
        _check_hash(seed, "root1")
    else:
        seed, rest = proof[0], list(proof[1:])
    if len(rest) != inner + border:
        raise ProofError(
            f"the proof has {len(proof)} hashes; a valid one has "
            f"{inner + border + (0 if size1 == 1 << shift else 1)}"
        )
    mask = (size1 - 1) >> shift
    hash1 = _chain_border_right(_chain_inner_right(seed, rest[:inner], mask), rest[inner:])
    if hash1 != root1:
        raise ProofError("the consistency proof does not lead to root1")
    hash2 = _chain_border_right(_chain_inner(seed, rest[:inner], mask), rest[inner:])
    if hash2 != root2:
        raise ProofError("the consistency proof does not lead to root2")


def included(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """Whether `verify_inclusion` accepts the proof (the checks report, not raise)."""
    try:
        verify_inclusion(leaf, index, size, proof, root)
    except ProofError:
        return False
    return True
