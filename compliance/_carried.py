"""The originals of the key registrations `cofre audit retire` carried forward in a
bundle's period, each with its inclusion proof (`audit/carried.jsonl`).

IN PCI SCOPE (as evidence). Retention drops a monthly partition once archived and
appends again each key's latest `key.register` found in it, marked
``details.carried_forward_from`` with the original's leaf index (`audit.retention`).
Check 6d of the offline verifier accepts such a record only as an exact copy of a
registration of the same label earlier in the log: so the bundle carries that original,
read from the database while it is still online or from the archive in the object
store (`EvidenceSources.archived_entries`), with its proof in the covering head. An
original that cannot be read is written as ``unavailable`` with the reason, and the
verifier fails that record closed, naming it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping

from sqlalchemy import Engine, select

from audit.merkle import hash_b64
from audit.schema import READ_ONLY, audit_entries, audit_leaves
from audit.store import AuditStore
from cofre.errors import CofreError

NAME = "audit/carried.jsonl"
_NO_ARCHIVE = "no archive configured (COFRE_ARCHIVE__BUCKET) to read it from"


def _carried_from(engine: Engine, start: int, end: int, size: int) -> set[int]:
    """The leaf indices the period's registrations say they carry forward (within the
    covering head: any other index is the verifier's to refuse)."""
    query = (
        select(audit_entries.c.payload)
        .join(audit_leaves, audit_leaves.c.entry_id == audit_entries.c.id)
        .where(
            audit_leaves.c.leaf_index >= start,
            audit_leaves.c.leaf_index < end,
            # Canonical payloads sort their keys, so "action" is always first.
            audit_entries.c.payload.startswith('{"action":"key.register",'),
        )
    )
    wanted: set[int] = set()
    with engine.execution_options(**READ_ONLY).connect() as connection:
        for payload in connection.execute(query).scalars():
            details = json.loads(payload).get("details")
            carried = details.get("carried_forward_from") if isinstance(details, dict) else None
            if type(carried) is int and 0 <= carried < size:
                wanted.add(carried)
    return wanted


def stage_carried_originals(
    add: Callable[[str, bytes], None],
    store: AuditStore,
    archived: Callable[[Collection[int]], Mapping[int, str]] | None,
    *,
    start: int,
    end: int,
    size: int,
) -> None:
    """Stage (`add`) `audit/carried.jsonl` when registrations of leaves [`start`,
    `end`) were carried forward: one line per original they name, by leaf index:
    ``{"index", "payload", "proof"}`` (its inclusion proof in the tree of `size`), or
    ``{"index", "unavailable"}`` saying why it could not be read."""
    wanted = _carried_from(store.engine, start, end, size)
    found: dict[int, str] = {}
    for index in sorted(wanted):
        found.update(store.entries_page(index, index + 1, 1))
    retired = wanted - set(found)
    reasons: dict[int, str] = {}
    if retired and archived is None:
        reasons = dict.fromkeys(retired, _NO_ARCHIVE)
    elif retired and archived is not None:
        try:
            found.update(archived(retired))
        except CofreError as exc:
            reasons = dict.fromkeys(retired, f"the archive could not be read: {exc}")
    lines = []
    for index in sorted(wanted):
        row: dict[str, object] = {"index": index}
        if index in found:
            row["payload"] = found[index]
            row["proof"] = [hash_b64(h) for h in store.inclusion_proof(index, size)]
        else:
            row["unavailable"] = reasons.get(index, "no archived segment holds it")
        lines.append(json.dumps(row, sort_keys=True) + "\n")
    if lines:
        add(NAME, "".join(lines).encode())
