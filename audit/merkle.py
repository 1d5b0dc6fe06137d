"""RFC 9162 Merkle tree hashing, proofs and proof verification.

IN PCI SCOPE. Hashing is RFC 9162 section 2.1 (SHA-256): a leaf is
``SHA-256(0x00 || entry)``, an interior node ``SHA-256(0x01 || left || right)``, and the
empty tree's root is ``SHA-256("")``. Proofs are the RFC's PATH (2.1.3.1) and PROOF /
SUBPROOF (2.1.4.1); the verifiers are the RFC's algorithms (2.1.3.2, 2.1.4.2) in the
bit-decomposed form that transparency-dev/merkle's ``proof`` package uses, with its rules
for malformed input: every hash that enters a computation must be 32 bytes, a consistency
proof from the empty tree (size1 = 0) is rejected, and equal sizes need an empty proof
and equal roots.

Public interface (other tools call it): `leaf_hash`, `node_hash`, `root_hash`,
`inclusion_proof`, `consistency_proof`, `verify_inclusion`, `verify_consistency`. The
verifiers return ``None`` or raise `audit.errors.ProofError`.

Proof generation works over any `SubtreeSource`, so the audit store can answer from its
table of complete-subtree hashes with O(log n) lookups instead of rehashing n leaves.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Final, Protocol

from audit.errors import ProofError

HASH_SIZE: Final = 32
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    """Return the RFC 9162 leaf hash ``SHA-256(0x00 || entry)``."""
    return hashlib.sha256(b"\x00" + entry).digest()


def hash_b64(value: bytes) -> str:
    """A hash as the audit log's JSON carries it (heads, proofs, exports, bundles):
    standard base64 text."""
    return base64.b64encode(value).decode()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 interior node hash ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly less than `n` (n > 1): RFC 9162's k."""
    return 1 << ((n - 1).bit_length() - 1)


class SubtreeSource(Protocol):
    """Where proof generation reads complete-subtree hashes from."""

    def complete_subtree(self, level: int, index: int) -> bytes:
        """Return the hash of leaves ``[index << level, (index + 1) << level)``."""
        ...


class LeafLevels:
    """A `SubtreeSource` over a list of leaf hashes: every complete level, built once
    (O(n)), then each lookup is O(1)."""

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        levels = [list(leaf_hashes)]
        while len(levels[-1]) > 1:
            below = levels[-1]
            levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])
        self._levels = levels

    def complete_subtree(self, level: int, index: int) -> bytes:
        return self._levels[level][index]


class CompactRange:
    """The compact range ``[0, size)`` of a Merkle tree: for every set bit L of `size`,
    the hash of the complete subtree at level L that ends the range (its right border).

    The one tree builder of the audit log: the sequencer appends queued entries with it,
    the audit store's verifier rebuilds the log with it, and the offline bundle verifier
    rebuilds a covering head's root from the bundle's subtrees and entries with it
    (transparency-dev/merkle's `compact.Range`, restricted to ranges that start at 0).
    """

    def __init__(self, size: int = 0, border: dict[int, bytes] | None = None) -> None:
        border = dict(border or {})
        if set(border) != {level for level, _ in self.border_positions(size)}:
            raise ValueError(f"a border of a tree of {size} leaves has one hash per set bit")
        self.size = size
        self._border = border

    @staticmethod
    def border_positions(size: int) -> list[tuple[int, int]]:
        """(level, index) of the complete subtrees that form the border of `size` leaves."""
        return [
            (level, (size >> level) - 1) for level in range(size.bit_length()) if size >> level & 1
        ]

    def border(self) -> dict[int, bytes]:
        """The border's hashes by level (what the constructor takes)."""
        return dict(self._border)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Append one leaf hash; return the complete subtrees it completes as
        (level, index, hash), the leaf itself first."""
        return self.append_subtree(0, leaf)

    def append_subtree(self, level: int, subtree: bytes) -> list[tuple[int, int, bytes]]:
        """Append the hash of a complete subtree of ``2**level`` leaves, which must start
        at `size` (aligned); return the subtrees it completes, itself first. Raises
        `ValueError` when it is not aligned."""
        if self.size % (1 << level):
            raise ValueError(f"a level-{level} subtree cannot start at leaf {self.size}")
        current, position = subtree, self.size >> level
        made = [(level, position, current)]
        self.size += 1 << level
        while position & 1:
            current = node_hash(self._border.pop(level), current)
            level += 1
            position >>= 1
            made.append((level, position, current))
        self._border[level] = current
        return made

    def root(self) -> bytes:
        """The root hash of the range (the empty tree's root for size 0)."""
        root: bytes | None = None
        for level in sorted(self._border):
            root = self._border[level] if root is None else node_hash(self._border[level], root)
        return EMPTY_ROOT if root is None else root


def subtree_hash(source: SubtreeSource, start: int, end: int) -> bytes:
    """Return MTH(D[start:end]) for a subtree that is complete except at the right edge."""
    size = end - start
    if size == 0:
        return EMPTY_ROOT
    if size & (size - 1) == 0 and start % size == 0:
        level = size.bit_length() - 1
        return source.complete_subtree(level, start >> level)
    k = _split(size)
    return node_hash(subtree_hash(source, start, start + k), subtree_hash(source, start + k, end))


def _path(source: SubtreeSource, m: int, start: int, end: int) -> list[bytes]:
    # RFC 9162 2.1.3.1: PATH(m, D[n])
    n = end - start
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(source, m, start, start + k), subtree_hash(source, start + k, end)]
    return [*_path(source, m - k, start + k, end), subtree_hash(source, start, start + k)]


def _subproof(source: SubtreeSource, m: int, start: int, end: int, whole: bool) -> list[bytes]:
    # RFC 9162 2.1.4.1: SUBPROOF(m, D[n], b)
    n = end - start
    if m == n:
        return [] if whole else [subtree_hash(source, start, end)]
    k = _split(n)
    if m <= k:
        return [
            *_subproof(source, m, start, start + k, whole),
            subtree_hash(source, start + k, end),
        ]
    return [
        *_subproof(source, m - k, start + k, end, False),
        subtree_hash(source, start, start + k),
    ]


def inclusion_proof_from(source: SubtreeSource, index: int, size: int) -> list[bytes]:
    """Return the inclusion proof of leaf `index` in the tree of the first `size` leaves.

    Raises `ProofError` when ``not 0 <= index < size``.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    return _path(source, index, 0, size)


def consistency_proof_from(source: SubtreeSource, size1: int, size2: int) -> list[bytes]:
    """Return the consistency proof from size `size1` to size `size2`.

    Raises `ProofError` when ``not 0 < size1 <= size2`` (an empty tree is consistent with
    everything, so the RFC defines no proof from it).
    """
    if not 0 < size1 <= size2:
        raise ProofError(f"no consistency proof from size {size1} to size {size2}")
    return _subproof(source, size1, 0, size2, True)


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the RFC 9162 Merkle tree hash of `leaf_hashes` (``SHA-256("")`` if empty)."""
    if not leaf_hashes:
        return EMPTY_ROOT
    return subtree_hash(LeafLevels(leaf_hashes), 0, len(leaf_hashes))


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Return the inclusion proof of `leaf_hashes[index]` in the tree of all `leaf_hashes`.

    Raises `ProofError` for an index outside the tree.
    """
    return inclusion_proof_from(LeafLevels(leaf_hashes), index, len(leaf_hashes))


def consistency_proof(leaf_hashes: Sequence[bytes], size1: int) -> list[bytes]:
    """Return the proof that the tree of the first `size1` leaves is a prefix of the tree
    of all ``size2 = len(leaf_hashes)`` leaves.

    Raises `ProofError` unless ``0 < size1 <= size2``.
    """
    return consistency_proof_from(LeafLevels(leaf_hashes), size1, len(leaf_hashes))


# ---------------------------------------------------------------------- verification
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


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """Return the root that `proof` implies for `leaf` at `index` in a tree of `size`.

    Raises `ProofError` for an index outside the tree or a proof of the wrong shape.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    _check_hash(leaf, "the leaf hash")
    inner, border = _decompose(index, size)
    if len(proof) != inner + border:
        raise ProofError(f"the proof has {len(proof)} hashes; a valid one has {inner + border}")
    for position, element in enumerate(proof):
        _check_hash(element, f"proof hash {position}")
    return _chain_border_right(_chain_inner(leaf, proof[:inner], index), proof[inner:])


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Return if `proof` shows `leaf_hash` at `index` in the tree of `size` with `root`.

    Raises `ProofError` otherwise.
    """
    calculated = root_from_inclusion_proof(leaf_hash, index, size, proof)
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
    """Return if `proof` shows the tree (`size1`, `root1`) is a prefix of (`size2`, `root2`).

    Raises `ProofError` otherwise.
    """
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
