"""Sealed segments of the audit log: the archive format, writing one, verifying one.

IN PCI SCOPE. A sealed segment is the contiguous leaf range ``[start, end)`` that ends
exactly at a signed tree head, so everything in it is already covered by a signature.
It is one gzip-compressed JSON Lines object (format ``cofre-audit-segment``, version 1),
each line one JSON object with a ``type``, in this order:

1. ``segment``: ``format``, ``version``, ``log_id``, ``start``, ``end``.
2. ``previous_head`` (absent when ``start`` is 0): the signed head of size ``start``,
   which ended the previous segment, as stored (`SignedTreeHead.as_json`).
3. ``border`` (absent when ``start`` is 0): the complete subtrees that make up the tree
   of the first ``start`` leaves (``nodes``: ``level``, ``index``, base64 ``hash``); they
   must hash to the previous head's root, so the segment verifies with nothing else.
4. ``entry``, ``end - start`` of them: ``index`` and the canonical JSON ``payload``,
   whose UTF-8 bytes are the RFC 9162 leaf data.
5. ``head``: the signed head of size ``end``, as stored.
6. ``consistency`` (absent when ``start`` is 0): RFC 9162 consistency proof (base64
   hashes) from the previous head to this one.

A verifier holding a trusted head of size ``start`` (the end of the previous segment,
or the empty tree) checks: the previous head equals it, the border hashes to its root,
the entries extend the border to the new head's root, the new head's signature, and the
consistency proof. Fields may be added to a line in later versions; a reader refuses a
version it does not know. The gzip header carries no time or name, so the same segment
always compresses to the same bytes (a re-upload is byte-identical).
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, Final

from audit.errors import AuditVerificationFailed, ProofError
from audit.heads import SignedTreeHead, verify_tree_head
from audit.merkle import CompactRange, leaf_hash, verify_consistency

SEGMENT_FORMAT: Final = "cofre-audit-segment"
SEGMENT_VERSION: Final = 1


def head_from_json(data: Mapping[str, Any]) -> SignedTreeHead:
    """Return the head `SignedTreeHead.as_json` produced. Raises `ValueError`/`KeyError`
    /`TypeError` on a malformed one."""
    return SignedTreeHead(
        tree_size=int(data["tree_size"]),
        root_hash=base64.b64decode(data["root_hash"], validate=True),
        timestamp_ms=int(data["timestamp_ms"]),
        key_id=str(data["key_id"]),
        checkpoint=str(data["checkpoint"]),
        signature=base64.b64decode(data["signature"], validate=True),
    )


@dataclass(frozen=True, slots=True)
class SegmentSource:
    """Everything a segment holds, as read from the database by the archiver."""

    log_id: str
    start: int
    end: int
    previous_head: SignedTreeHead | None
    border: Mapping[int, bytes]
    head: SignedTreeHead
    consistency: list[bytes]


_ENCODE: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
# Lines are gathered and compressed about a megabyte at a time: zlib called once per
# 400-byte line spent more time than everything else together.
_FLUSH_BYTES: Final = 1 << 20


class _Lines:
    def __init__(self, out: gzip.GzipFile) -> None:
        self._out = out
        self._pending: list[bytes] = []
        self._size = 0

    def add(self, record: Mapping[str, object]) -> None:
        line = _ENCODE(record).encode() + b"\n"
        self._pending.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        self._out.write(b"".join(self._pending))
        self._pending.clear()
        self._size = 0


def write_segment(out: IO[bytes], source: SegmentSource, entries: Iterable[tuple[int, str]]) -> int:
    """Write the segment of `source` with `entries` (leaf index, payload) to `out`,
    gzip-compressed; return how many entries were written.

    Raises `AuditVerificationFailed` when the entries are not exactly the leaves
    ``start..end-1`` or do not hash to the head's root: an archive must never hold a
    segment that does not verify.
    """
    start, end = source.start, source.end
    tree = CompactRange(start, dict(source.border))
    if source.previous_head is not None and tree.root() != source.previous_head.root_hash:
        raise AuditVerificationFailed(
            f"the stored tree border at {start} does not hash to signed tree head {start}", start
        )
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="", compresslevel=6) as packed:
        lines = _Lines(packed)
        header = {"format": SEGMENT_FORMAT, "version": SEGMENT_VERSION, "log_id": source.log_id}
        lines.add({"type": "segment", **header, "start": start, "end": end})
        if source.previous_head is not None:
            lines.add({"type": "previous_head", **source.previous_head.as_json()})
            nodes = [
                {"level": lv, "index": ix, "hash": base64.b64encode(source.border[lv]).decode()}
                for lv, ix in CompactRange.border_positions(start)
            ]
            lines.add({"type": "border", "size": start, "nodes": nodes})
        expected = start
        for index, payload in entries:
            if index != expected or index >= end:
                raise AuditVerificationFailed(
                    f"segment {start}-{end}: leaf index {expected} is missing from the log",
                    expected,
                )
            tree.append(leaf_hash(payload.encode("utf-8")))
            lines.add({"type": "entry", "index": index, "payload": payload})
            expected += 1
        if expected != end:
            raise AuditVerificationFailed(
                f"segment {start}-{end}: leaf index {expected} is missing from the log", expected
            )
        if tree.root() != source.head.root_hash:
            raise AuditVerificationFailed(
                f"segment {start}-{end}: the entries do not hash to signed tree head {end}", start
            )
        lines.add({"type": "head", **source.head.as_json()})
        if source.previous_head is not None:
            proof = [base64.b64encode(h).decode() for h in source.consistency]
            lines.add({"type": "consistency", "from": start, "to": end, "proof": proof})
        lines.flush()
    return end - start


class _Reader:
    """The lines of one segment, each parsed, with the segment's name for errors."""

    def __init__(self, stream: IO[bytes], name: str) -> None:
        self._lines = self._parse(stream)
        self.name = name
        self.pending: dict[str, Any] | None = None

    def _parse(self, stream: IO[bytes]) -> Iterator[dict[str, Any]]:
        with gzip.GzipFile(fileobj=stream, mode="rb") as unpacked:
            for raw in unpacked:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise TypeError("a line is not a JSON object")
                yield record

    def fail(self, message: str, index: int | None = None) -> AuditVerificationFailed:
        return AuditVerificationFailed(f"archived segment {self.name}: {message}", index)

    def next(self) -> dict[str, Any] | None:
        if self.pending is not None:
            record, self.pending = self.pending, None
            return record
        return next(self._lines, None)

    def expect(self, kind: str) -> dict[str, Any]:
        record = self.next()
        if record is None or record.get("type") != kind:
            found = "the end" if record is None else repr(record.get("type"))
            raise self.fail(f"expected a {kind!r} line, found {found}")
        return record


def verify_segment(
    stream: IO[bytes],
    name: str,
    *,
    start: int,
    end: int,
    previous_head: SignedTreeHead | None,
    public_key_pem: bytes,
) -> SignedTreeHead:
    """Verify the segment in `stream` (named `name` in errors) as leaves
    ``[start, end)`` following the trusted `previous_head` (None when `start` is 0);
    return its signed end head, now trusted.

    Raises `AuditVerificationFailed` naming the segment when anything does not hold.
    """
    reader = _Reader(stream, name)
    try:
        return _verify(reader, start, end, previous_head, public_key_pem)
    except (ValueError, KeyError, TypeError, OSError, EOFError) as exc:
        raise reader.fail(f"unreadable ({type(exc).__name__})", start) from None


def _verify(
    reader: _Reader,
    start: int,
    end: int,
    trusted: SignedTreeHead | None,
    pem: bytes,
) -> SignedTreeHead:
    header = reader.expect("segment")
    if header.get("format") != SEGMENT_FORMAT or header.get("version") != SEGMENT_VERSION:
        raise reader.fail(
            f"format {header.get('format')!r} version {header.get('version')!r} is not "
            f"{SEGMENT_FORMAT} version {SEGMENT_VERSION}"
        )
    if (header.get("start"), header.get("end")) != (start, end):
        raise reader.fail(
            f"holds leaves {header.get('start')}..{header.get('end')}, expected {start}..{end}"
        )
    tree = _left_of(reader, start, trusted) if start > 0 else CompactRange()
    _read_entries(reader, tree, end)
    head = head_from_json(reader.expect("head"))
    if head.tree_size != end:
        raise reader.fail(f"its head has size {head.tree_size}, not {end}")
    try:
        verify_tree_head(head, pem)
    except AuditVerificationFailed as exc:
        raise reader.fail(str(exc), start) from None
    if tree.root() != head.root_hash:
        raise reader.fail(
            f"the entries do not hash to signed tree head {end}: an entry in leaf indices "
            f"{start}..{end - 1} was changed, removed or reordered",
            start,
        )
    if trusted is not None and start > 0:
        record = reader.expect("consistency")
        proof = [base64.b64decode(h) for h in record["proof"]]
        try:
            verify_consistency(start, end, proof, trusted.root_hash, head.root_hash)
        except ProofError as exc:
            raise reader.fail(f"the consistency proof does not verify ({exc})", start) from None
    if reader.next() is not None:
        raise reader.fail("has lines after its end")
    return head


def _left_of(reader: _Reader, start: int, trusted: SignedTreeHead | None) -> CompactRange:
    """The tree of the first `start` leaves, from the segment's border, checked against
    the trusted head of that size."""
    if trusted is None or trusted.tree_size != start:
        raise reader.fail(f"no trusted head of size {start} to continue from", start)
    previous = head_from_json(reader.expect("previous_head"))
    if previous != trusted:
        raise reader.fail(
            f"its previous head (size {previous.tree_size}) is not the trusted head of "
            f"size {start}: the archive forks or was rewritten",
            start,
        )
    border = reader.expect("border")
    hashes = {int(n["level"]): base64.b64decode(n["hash"]) for n in border["nodes"]}
    try:
        tree = CompactRange(start, hashes)
    except ValueError:
        raise reader.fail(f"the border is not that of a tree of {start} leaves") from None
    if tree.root() != trusted.root_hash:
        raise reader.fail(f"the border does not hash to signed tree head {start}", start)
    return tree


def _read_entries(reader: _Reader, tree: CompactRange, end: int) -> None:
    """Append the segment's entries to `tree`, checking their indices run to `end`."""
    start = expected = tree.size
    while True:
        record = reader.next()
        if record is None or record.get("type") != "entry":
            reader.pending = record
            break
        if record.get("index") != expected or expected >= end:
            raise reader.fail(f"leaf index {expected} is missing or out of order", expected)
        tree.append(leaf_hash(str(record["payload"]).encode("utf-8")))
        expected += 1
    if expected != end:
        raise reader.fail(f"holds {expected - start} of its {end - start} entries", expected)
