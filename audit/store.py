"""Reading the audit log: heads, entries, proofs from the stored tree, and the full
verification behind `cofre audit verify`.

IN PCI SCOPE. Proofs are built from ``audit_nodes`` (complete-subtree hashes) with
O(log n) lookups, fetched in one query. Verification trusts nothing stored but the
entries themselves and the signatures: it rehashes every entry, rebuilds the tree, and
compares each signed head.

Once monthly partitions were retired (`audit.retention`), the entries below
``online_from`` live only in the archive (`cofre audit verify-archive` checks them); the
online verification then starts from the signed head at ``online_from``, whose tree
border it takes from ``audit_nodes`` only after checking it hashes to that head's root.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Row, and_, func, or_, select

from audit.errors import AuditReadFailed, AuditVerificationFailed, AuditWriteFailed, ProofError
from audit.handover import handover_notes, key_chain
from audit.heads import SignedTreeHead, verify_tree_head
from audit.merkle import (
    CompactRange,
    consistency_proof_from,
    inclusion_proof_from,
    leaf_hash,
    subtree_hash,
)
from audit.note import KeyChain
from audit.schema import (
    READ_ONLY,
    audit_entries,
    audit_heads,
    audit_leaves,
    audit_nodes,
    audit_queue,
    audit_retired,
)
from audit.sequencer import load_compact_range, tree_size
from cofre.dberrors import database_errors_as


class _RecordingSource:
    """First pass of a proof: record which complete subtrees are needed."""

    def __init__(self) -> None:
        self.wanted: set[tuple[int, int]] = set()

    def complete_subtree(self, level: int, index: int) -> bytes:
        self.wanted.add((level, index))
        return b"\x00" * 32


class _DictSource:
    def __init__(self, nodes: dict[tuple[int, int], bytes]) -> None:
        self._nodes = nodes

    def complete_subtree(self, level: int, index: int) -> bytes:
        try:
            return self._nodes[(level, index)]
        except KeyError:
            raise ProofError(f"the stored tree lacks node ({level}, {index})") from None


@dataclass(frozen=True)
class VerifyReport:
    entries: int
    heads_checked: int
    latest_head: SignedTreeHead | None
    queued: int
    problems: list[str] = field(default_factory=list)
    # Leaves below this index were retired from the database: verified in the archive.
    online_from: int = 0


def head_from_row(row: Row[Any]) -> SignedTreeHead:
    """The signed tree head an `audit_heads` row holds."""
    return SignedTreeHead(
        tree_size=int(row.tree_size),
        root_hash=bytes(row.root_hash),
        timestamp_ms=int(row.timestamp_ms),
        key_id=str(row.key_id),
        checkpoint=str(row.checkpoint),
        signature=bytes(row.signature),
    )


class AuditStore:
    """Read access to one audit log in one database."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine.execution_options(**READ_ONLY)

    @property
    def engine(self) -> Engine:
        """The (read-only) engine this store reads."""
        return self._engine

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        """Every read goes through here: a database outage leaves the audit package as
        `AuditReadFailed` (503), never as a driver error."""
        with database_errors_as(AuditReadFailed, "the audit log"), self._engine.connect() as c:
            yield c

    def size(self) -> int:
        with self._connect() as connection:
            return tree_size(connection)

    def heads(self) -> list[SignedTreeHead]:
        with self._connect() as connection:
            rows = connection.execute(select(audit_heads).order_by(audit_heads.c.tree_size)).all()
        return [head_from_row(row) for row in rows]

    def latest_head(self) -> SignedTreeHead | None:
        with self._connect() as connection:
            row = connection.execute(
                select(audit_heads).order_by(audit_heads.c.tree_size.desc()).limit(1)
            ).first()
        return None if row is None else head_from_row(row)

    def head_at(self, size: int) -> SignedTreeHead | None:
        with self._connect() as connection:
            row = connection.execute(
                select(audit_heads).where(audit_heads.c.tree_size == size)
            ).first()
        return None if row is None else head_from_row(row)

    def entry(self, index: int) -> str:
        """Return the canonical JSON of the entry at leaf `index`. Raises `ProofError`."""
        with self._connect() as connection:
            payload = connection.execute(
                select(audit_entries.c.payload)
                .join(audit_leaves, audit_leaves.c.entry_id == audit_entries.c.id)
                .where(audit_leaves.c.leaf_index == index)
            ).scalar()
        if payload is None:
            raise ProofError(f"no entry at leaf index {index}")
        return str(payload)

    def iter_entries(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, str]]:
        """Yield (leaf index, canonical JSON) in leaf order."""
        query = (
            select(audit_leaves.c.leaf_index, audit_entries.c.payload)
            .join(audit_entries, audit_entries.c.id == audit_leaves.c.entry_id)
            .where(audit_leaves.c.leaf_index >= start)
            .order_by(audit_leaves.c.leaf_index)
        )
        if end is not None:
            query = query.where(audit_leaves.c.leaf_index < end)
        with self._connect() as connection:
            result = connection.execution_options(yield_per=2000).execute(query)
            try:
                for row in result:
                    yield int(row.leaf_index), str(row.payload)
            finally:
                result.close()

    def entries_page(self, start: int, end: int, limit: int) -> list[tuple[int, str]]:
        """Return up to `limit` (leaf index, canonical JSON) from `start` (inclusive) to
        `end` (exclusive), in leaf order: one keyset page, read in its own short
        transaction (a long export never holds a cursor or a snapshot open)."""
        with self._connect() as connection:
            rows = connection.execute(
                select(audit_leaves.c.leaf_index, audit_entries.c.payload)
                .join(audit_entries, audit_entries.c.id == audit_leaves.c.entry_id)
                .where(audit_leaves.c.leaf_index >= start, audit_leaves.c.leaf_index < end)
                .order_by(audit_leaves.c.leaf_index)
                .limit(limit)
            ).all()
        return [(int(row.leaf_index), str(row.payload)) for row in rows]

    def heads_page(self, above: int, up_to: int, limit: int) -> list[SignedTreeHead]:
        """Return up to `limit` signed heads with `above` < tree size <= `up_to`, smallest
        first: one keyset page (the next page starts above the last size returned)."""
        with self._connect() as connection:
            rows = connection.execute(
                select(audit_heads)
                .where(audit_heads.c.tree_size > above, audit_heads.c.tree_size <= up_to)
                .order_by(audit_heads.c.tree_size)
                .limit(limit)
            ).all()
        return [head_from_row(row) for row in rows]

    def _fetch(self, wanted: set[tuple[int, int]]) -> _DictSource:
        nodes: dict[tuple[int, int], bytes] = {}
        keys = sorted(wanted)
        with self._connect() as connection:
            for chunk in range(0, len(keys), 200):
                part = keys[chunk : chunk + 200]
                rows = connection.execute(
                    select(audit_nodes.c.level, audit_nodes.c.idx, audit_nodes.c.hash).where(
                        or_(
                            *(
                                and_(audit_nodes.c.level == lv, audit_nodes.c.idx == ix)
                                for lv, ix in part
                            )
                        )
                    )
                ).all()
                nodes.update({(int(r.level), int(r.idx)): bytes(r.hash) for r in rows})
        return _DictSource(nodes)

    def subtree_hashes(self, wanted: set[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Stored complete-subtree hashes by (level, index), in one query per 200."""
        source = self._fetch(wanted)
        return {key: source.complete_subtree(*key) for key in wanted}

    def _checked_size(self, size: int | None) -> int:
        current = self.size()
        if size is None:
            return current
        if not 0 < size <= current:
            raise ProofError(f"tree size {size} is outside 1..{current}")
        return size

    def root_at(self, size: int) -> bytes:
        """Return the root hash of the tree of the first `size` leaves."""
        size = self._checked_size(size)
        recorder = _RecordingSource()
        subtree_hash(recorder, 0, size)
        return subtree_hash(self._fetch(recorder.wanted), 0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Return the inclusion proof of leaf `index` in the tree of `size` (default: the
        whole tree). Raises `ProofError`."""
        size = self._checked_size(size)
        recorder = _RecordingSource()
        inclusion_proof_from(recorder, index, size)
        return inclusion_proof_from(self._fetch(recorder.wanted), index, size)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """Return the consistency proof from `size1` to `size2` (default: current size)."""
        size2 = self._checked_size(size2)
        recorder = _RecordingSource()
        consistency_proof_from(recorder, size1, size2)
        return consistency_proof_from(self._fetch(recorder.wanted), size1, size2)

    # ------------------------------------------------------------------ verification
    def verify(self, public_key_pem: bytes | None) -> VerifyReport:
        """Rehash every entry, rebuild the tree, and check it against every signed head
        (and each head's signature when `public_key_pem` is given).

        Raises `AuditVerificationFailed` naming the first bad leaf index (or the head)
        when the stored log differs from what was signed.
        """
        heads = self.heads()
        head_by_size = {head.tree_size: head for head in heads}
        if public_key_pem is not None:
            chain = self.key_chain(public_key_pem)
            for head in heads:
                try:
                    verify_tree_head(head, chain.pem_for(head.tree_size))
                except AuditVerificationFailed as exc:
                    raise AuditVerificationFailed(
                        f"{exc} ({chain.describe(head.tree_size)}: signed by a key no valid "
                        "handover introduced, or altered)"
                    ) from None
        online_from = self.online_from()
        stored_leaves = self._stored_leaf_hashes(online_from)
        tree = self._trusted_border(online_from, head_by_size)
        count = online_from
        checked = 0
        last_good = online_from
        query = (
            select(audit_leaves.c.leaf_index, audit_entries.c.payload)
            .select_from(
                audit_leaves.outerjoin(audit_entries, audit_entries.c.id == audit_leaves.c.entry_id)
            )
            .where(audit_leaves.c.leaf_index >= online_from)
            .order_by(audit_leaves.c.leaf_index)
        )
        with self._connect() as connection:
            result = connection.execution_options(yield_per=5000).execute(query)
            try:
                for row in result:
                    index = int(row.leaf_index)
                    if index != count:
                        raise AuditVerificationFailed(
                            f"leaf index {count} is missing: the log was cut at index {count}",
                            count,
                        )
                    if row.payload is None:
                        raise AuditVerificationFailed(
                            f"the entry at leaf index {index} has been removed", index
                        )
                    current = leaf_hash(str(row.payload).encode("utf-8"))
                    stored = stored_leaves.get(index)
                    if stored is not None and stored != current:
                        raise AuditVerificationFailed(
                            f"the entry at leaf index {index} was changed after it was logged",
                            index,
                        )
                    tree.append(current)
                    count += 1
                    signed = head_by_size.get(count)
                    if signed is not None:
                        if tree.root() != signed.root_hash:
                            raise AuditVerificationFailed(
                                f"the entries do not match signed tree head {count}: an entry in "
                                f"leaf indices {last_good}..{count - 1} was changed, removed or "
                                "reordered",
                                last_good,
                            )
                        checked += 1
                        last_good = count

            finally:
                result.close()
            queued = self._queued(connection)
            orphan = self._orphan(connection)
        missing_heads = [h.tree_size for h in heads if h.tree_size > count]
        if missing_heads:
            raise AuditVerificationFailed(
                f"signed tree head {missing_heads[0]} covers entries beyond the {count} stored: "
                f"entries from leaf index {count} were removed",
                count,
            )
        if orphan is not None:
            # Its operation was answered (entry and queue row commit together), yet it
            # will never be in the tree: its queue row was removed (review 26).
            raise AuditVerificationFailed(
                f"audit entry {orphan} is neither in the tree nor queued for it: its leaf or "
                "queue row was removed, so it is not logged",
                count,
            )
        return VerifyReport(
            entries=count,
            heads_checked=checked,
            latest_head=heads[-1] if heads else None,
            queued=queued,
            online_from=online_from,
        )

    def key_chain(self, public_key_pem: bytes) -> KeyChain:
        """The audit key chain (`audit.handover`) anchored at the pinned key: which key
        signs the heads of each size. Raises `AuditVerificationFailed`."""
        with self._connect() as connection:
            return key_chain(connection, public_key_pem)

    def handover_notes(self) -> list[str]:
        """Every audit key handover note, oldest first."""
        with self._connect() as connection:
            return handover_notes(connection)

    def online_from(self) -> int:
        """The leaf index from which every entry is still in the database (0 until a
        partition was retired)."""
        with self._connect() as connection:
            value = connection.execute(select(func.max(audit_retired.c.online_from))).scalar()
        return 0 if value is None else int(value)

    def _trusted_border(self, size: int, heads: dict[int, SignedTreeHead]) -> CompactRange:
        """The tree of the first `size` leaves, from stored nodes that hash to the signed
        head of that size. Raises `AuditVerificationFailed` otherwise."""
        if size == 0:
            return CompactRange()
        head = heads.get(size)
        if head is None:
            raise AuditVerificationFailed(
                f"the online log starts at leaf index {size} (older partitions were retired) "
                f"but no signed tree head of size {size} is stored",
                size,
            )
        try:
            with self._connect() as connection:
                tree = load_compact_range(connection, size)
        except AuditWriteFailed:
            raise AuditVerificationFailed(
                f"the stored tree lacks the border of signed tree head {size}", size
            ) from None
        if tree.root() != head.root_hash:
            raise AuditVerificationFailed(
                f"the stored tree border does not hash to signed tree head {size}", size
            )
        return tree

    def _stored_leaf_hashes(self, start: int = 0) -> dict[int, bytes]:
        with self._connect() as connection:
            rows = connection.execute(
                select(audit_nodes.c.idx, audit_nodes.c.hash).where(
                    audit_nodes.c.level == 0, audit_nodes.c.idx >= start
                )
            )
            return {int(r.idx): bytes(r.hash) for r in rows}

    @staticmethod
    def _orphan(connection: Connection) -> int | None:
        """The first online entry with neither a leaf nor a queue row, if any. One
        statement, so one snapshot: the sequencer moves an entry from the queue to the
        tree in one transaction."""
        leaf = select(audit_leaves.c.entry_id).where(audit_leaves.c.entry_id == audit_entries.c.id)
        queued = select(audit_queue.c.entry_id).where(audit_queue.c.entry_id == audit_entries.c.id)
        found = connection.execute(
            select(audit_entries.c.id)
            .where(~leaf.exists(), ~queued.exists())
            .order_by(audit_entries.c.id)
            .limit(1)
        ).scalar()
        return None if found is None else int(found)

    @staticmethod
    def _queued(connection: Connection) -> int:
        return int(connection.execute(select(func.count()).select_from(audit_queue)).scalar_one())

    def export(self) -> Iterator[str]:
        """Yield JSON lines: every entry with its index and leaf hash, then every head."""
        for index, payload in self.iter_entries():
            yield json.dumps(
                {
                    "type": "entry",
                    "index": index,
                    "leaf_hash": base64.b64encode(leaf_hash(payload.encode("utf-8"))).decode(),
                    "payload": payload,
                }
            )
        for head in self.heads():
            yield json.dumps({"type": "head", **head.as_json()})
