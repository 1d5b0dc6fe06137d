"""Checks 4 and 5: the audit entries are the consecutive leaf indices the manifest
claims (at least one, all inside the covering head's tree), each inside the period, and
the Merkle root rebuilt from them (and the subtree hashes around them) is the covering
signed head's, as the manifest states; each inclusion proof verifies, which names the
first entry that was changed, removed or reordered. Each signed head whose size lies
within the period's entries must be a prefix of the covering head (review 30): one that
is not is a head of another history, named and dropped from the verified heads."""

from __future__ import annotations

import base64
from bisect import bisect_left
from typing import Any

from cofre_evidence_verifier.boundaries import ENTRY_TIME
from cofre_evidence_verifier.bundle import (
    Files,
    Heads,
    base64_bytes,
    hash_list,
    integer,
    json_lines,
    json_object,
)
from cofre_evidence_verifier.errors import MalformedBundle, ProofError
from cofre_evidence_verifier.merkle import CompactRange, included, leaf_hash
from cofre_evidence_verifier.report import Report


def _starting(blocks: dict[tuple[int, int], bytes], size: int) -> dict[int, tuple[int, bytes]]:
    """The subtree hashes by the leaf each starts at (one per leaf: the last given)."""
    return {
        index << level: (level, value)
        for (level, index), value in blocks.items()
        if 0 <= level < size.bit_length() and 0 <= index < size
    }


def rebuild_root(
    blocks: dict[tuple[int, int], bytes], leaves: dict[int, bytes], size: int
) -> bytes:
    """The root of the tree of `size` leaves, rebuilt left to right from the period's
    leaves and the bundle's complete-subtree hashes around them (as the vault's sequencer
    built it). A leaf of the period is always hashed from its entry: a subtree hash that
    would stand in for one is refused, so an altered entry cannot hide behind its
    original subtree hash. Raises `ProofError` for a position nothing covers."""
    # Sorted once: whether a subtree overlaps a leaf of the period is then one bisection,
    # not a scan of every leaf per subtree hash (quadratic in the bundle, review 29).
    indices = sorted(leaves)
    starting = _starting(blocks, size)
    tree = CompactRange()
    while tree.size < size:
        at = tree.size
        if at in leaves:
            tree.append(leaves[at])
            continue
        if at not in starting:
            raise ProofError(f"no leaf {at} and no subtree hash covering it")
        level, value = starting[at]
        # Bounded before shifting: a forged level must not cost memory or time.
        end = at + (1 << level) if 0 <= level < size.bit_length() else size + 1
        after = bisect_left(indices, at)
        if end > size or (after < len(indices) and indices[after] < end):
            raise ProofError(
                f"the subtree hash at level {level} from leaf {at} overlaps the period's "
                "entries or the tree's end"
            )
        tree.append_subtree(level, value)
    return tree.root()


def prefix_roots(
    blocks: dict[tuple[int, int], bytes],
    leaves: dict[int, bytes],
    start: int,
    size: int,
    sizes: set[int],
) -> dict[int, bytes]:
    """The root of the first `n` leaves for each `n` of `sizes` from `start` up to the
    last of the period's consecutive `leaves`, in the tree of `size` leaves: the
    complete-subtree hashes before `start` that `rebuild_root` takes (the same ones,
    so a root it verified vouches for them), then the period's leaves one by one.
    Raises `ProofError` when they do not cover the leaves before `start` exactly."""
    starting = _starting(blocks, size)
    tree = CompactRange()
    while tree.size < start:
        level, value = starting.get(tree.size, (-1, b""))
        if level < 0 or tree.size + (1 << level) > start:
            raise ProofError(f"no subtree hash covering leaf {tree.size} alone")
        tree.append_subtree(level, value)
    roots = {start: tree.root()} if start in sizes else {}
    while tree.size in leaves:
        tree.append(leaves[tree.size])
        if tree.size in sizes:
            roots[tree.size] = tree.root()
    return roots


def _check_period_heads(
    blocks: dict[tuple[int, int], bytes],
    leaves: dict[int, bytes],
    *,
    start: int,
    covering: int,
    heads: Heads,
    report: Report,
) -> None:
    """Report, and drop from `heads`, each signed head whose size lies within the
    period's entries and whose root is not the root of that many leaves of the covering
    head's tree (review 30): the HSM key signs any tree, so such a head is a fork, not
    one of this log's heads, whatever its signature says. Heads outside the period's
    entries cannot be computed from the bundle and stay as check 3 left them."""
    sizes = {size for size in heads if size != covering}
    try:
        roots = prefix_roots(blocks, leaves, start, covering, sizes)
    except ProofError:
        return  # the root check names what does not cover
    for size, root in sorted(roots.items()):
        if base64.b64decode(heads[size]["root_hash"]) != root:
            report.fail(
                f"audit/heads.jsonl: head {size} is not a prefix of the covering head "
                f"{covering}: its root is not the root of the first {size} entries of the "
                "log the bundle proves (a head of another history, signed with the audit "
                "key: a fork)"
            )
            heads.pop(size)


def _range_problem(start: int, end: int, size: int) -> str | None:
    """What is wrong with the claimed range [start, end) in the covering head's tree of
    `size` leaves, if anything. An entry at or past `size` is in no signed tree, so
    nothing else would check it (review 29); the exporter never makes an empty range,
    and a bundle of no entries proves nothing."""
    if start < 0:
        return f"manifest.json: first_index {start} is no leaf index"
    if end <= start:
        return (
            f"manifest.json: the bundle claims no entries (first_index {start}, end_index "
            f"{end}); an export holds at least one"
        )
    if end > size:
        return (
            f"manifest.json: entries {max(start, size)}..{end - 1} lie beyond the covering "
            f"head {size}: they are in no signed tree"
        )
    return None


def _time(payload: str) -> str | None:
    """The time of the audit entry `payload`, if it is one (a JSON object with a time)."""
    try:
        at = json_object(payload, "an entry").get("time")
    except ValueError:
        return None
    return at if isinstance(at, str) else None


def _subtrees_and_proofs(
    files: Files, report: Report
) -> tuple[dict[tuple[int, int], bytes], dict[int, list[bytes]]]:
    """The complete-subtree hashes by (level, index) and the inclusion proofs by leaf
    index; a line that is no JSON object is reported (a key twice among them: which
    value a reader keeps is not for the bundle to decide). Raises `MalformedBundle`
    naming a line of the wrong shape."""
    name = "audit/subtrees.jsonl"
    blocks = {
        (
            integer(b.get("level"), f"{name}: a level"),
            integer(b.get("index"), f"{name}: an index"),
        ): base64_bytes(b.get("hash"), f"{name}: a hash")
        for b in json_lines(files.get(name, b""), name, report)
    }
    name = "audit/inclusion.jsonl"
    proofs = {
        integer(p.get("index"), f"{name}: an index"): hash_list(p.get("proof"), f"{name}: a proof")
        for p in json_lines(files.get(name, b""), name, report)
    }
    return blocks, proofs


def _period_leaves(
    files: Files, manifest: dict[str, Any], *, start: int, end: int, size: int, report: Report
) -> dict[int, bytes]:
    """The leaf hashes of the bundle's entries by index; report each entry outside
    [start, end), each one missing, and each one outside the period."""
    entries = json_lines(
        files.get("audit/entries.jsonl", b""),
        "audit/entries.jsonl",
        report,
        # One line more than the range is read, so a stray entry is named.
        most=end - start + 1,
    )
    period = manifest["period"]
    leaves: dict[int, bytes] = {}
    expected = start
    for entry in entries:
        index, payload = entry.get("index"), entry.get("payload")
        if not isinstance(payload, str) or isinstance(index, bool) or not isinstance(index, int):
            report.fail(
                "audit/entries.jsonl: a line is not an entry (an integer index and a "
                "payload string)"
            )
            continue
        if not start <= index < end:
            report.fail(
                f"audit/entries.jsonl: entry {index} is outside the manifest's range "
                f"{start}..{end - 1}"
                + (" (beyond the covering head: in no signed tree)" if index >= size else "")
            )
            continue
        if index != expected:
            report.fail(f"audit/entries.jsonl: entry {expected} is missing (next is {index})")
            expected = index
        leaves[index] = leaf_hash(payload.encode("utf-8"))
        at = _time(payload)
        if at is None:
            report.fail(f"audit/entries.jsonl: entry {index} is not an audit entry with a time")
        elif ENTRY_TIME.fullmatch(at) is None:
            # Times are compared as text, and check 6c reads them as instants: one with
            # an offset sorted inside the period while naming an instant hours before it
            # (session 40: a second start of yesterday's ceremony, within its MFA window).
            report.fail(
                f"audit/entries.jsonl: entry {index} is not dated as the vault dates entries "
                f"(UTC, microseconds, Z): {at[:40]!r}"
            )
        elif not period["from"] <= at < period["to"]:
            report.fail(f"audit/entries.jsonl: entry {index} at {at} is outside the period")
        expected = index + 1
    if expected != end:
        report.fail(
            f"audit/entries.jsonl: ends at index {expected}, but the manifest claims "
            f"entries up to {end} (the period was cut short)"
        )
    return leaves


def check_entries(files: Files, manifest: dict[str, Any], heads: Heads, report: Report) -> None:
    """Report gaps, entries outside the period or the covering head's tree, and a root
    or proof that fails."""
    # The manifest's shape is checked before any check runs (`bundle.manifest_problem`).
    start, end = manifest["entries"]["first_index"], manifest["entries"]["end_index"]
    size = manifest["covering_head"]["tree_size"]
    head = heads.get(size)
    if head is None:
        report.fail(f"manifest.json: covering head {size} is not among the verified heads")
        return
    # The summary shows the manifest's covering root: it must be the signed head's, or
    # the report would show a root nothing checked (review 29).
    if manifest["covering_head"]["root_hash"] != head["root_hash"]:
        report.fail(f"manifest.json: covering_head.root_hash is not the root of signed head {size}")
        return
    problem = _range_problem(start, end, size)
    if problem is not None:
        report.fail(problem)
        return
    root = base64.b64decode(head["root_hash"])
    leaves = _period_leaves(files, manifest, start=start, end=end, size=size, report=report)
    try:
        blocks, proofs = _subtrees_and_proofs(files, report)
    except MalformedBundle as exc:
        report.fail(str(exc))
        return
    try:
        recomputed = rebuild_root(blocks, leaves, size)
    except ProofError as exc:
        report.fail(f"audit/subtrees.jsonl: {exc}")
        return
    first_bad = next(
        (
            i
            for i in sorted(leaves)
            if i in proofs and not included(leaves[i], i, size, proofs[i], root)
        ),
        None,
    )
    if recomputed == root:
        _check_period_heads(blocks, leaves, start=start, covering=size, heads=heads, report=report)
    if recomputed != root:
        where = f"; first bad entry: index {first_bad}" if first_bad is not None else ""
        report.fail(
            f"audit/entries.jsonl: the Merkle root recomputed from the entries does "
            f"not match signed head {size}{where}"
        )
    elif first_bad is not None:
        report.fail(f"audit/inclusion.jsonl: the inclusion proof of entry {first_bad} fails")
    else:
        report.passed(
            "entries",
            f"entries {start}..{end - 1} recompute signed head {size}'s root; "
            f"{len(proofs)} inclusion proofs verify",
        )
