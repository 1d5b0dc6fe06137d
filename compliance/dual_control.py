"""The audit entries an evidence bundle carries to prove each key rotation's dual control
(``keys/dual_control.json``), so the offline verifier re-counts its officers from their
signed requests (PCI DSS 3.6.1.2, 3.7.6).

IN PCI SCOPE (as evidence). A ceremony's proposal and approvals may have been logged
before the period that holds its start (a proposal lives a day): for each ceremony a
``key.rotation.start`` entry of the period names, and the one an ``audit.key.handover``
entry of the period belongs to, this lists its start and its ``key.rotation.propose``
and ``key.rotation.approve`` entries in the tree of the covering head, each with its
leaf ``index``, canonical ``payload`` (whose ``document`` is the officer's signed
request) and inclusion ``proof``. The file is the exporter's selection, not trusted:
the verifier checks every record against the signed head, and counts only what
verifies (`cofre_evidence_verifier.dual_control`).
"""

from __future__ import annotations

import json
from typing import Any, Final

from sqlalchemy import Engine, or_, select

from audit.handover import HANDOVER_ACTION
from audit.merkle import hash_b64
from audit.schema import READ_ONLY, audit_entries, audit_leaves
from audit.store import AuditStore

START: Final = "key.rotation.start"
_ACTIONS: Final = ("key.rotation.propose", "key.rotation.approve", START)


def _prefix(action: str) -> str:
    # Canonical payloads sort their keys, so "action" is always first.
    return f'{{"action":"{action}",'


def _leaves(engine: Engine, *conditions: Any) -> list[tuple[int, str]]:
    query = (
        select(audit_leaves.c.leaf_index, audit_entries.c.payload)
        .join(audit_entries, audit_entries.c.id == audit_leaves.c.entry_id)
        .where(*conditions)
        .order_by(audit_leaves.c.leaf_index)
    )
    with engine.execution_options(**READ_ONLY).connect() as connection:
        return [(int(index), str(payload)) for index, payload in connection.execute(query)]


def _started(engine: Engine, start: int, end: int, size: int) -> set[str]:
    """The ids of the ceremonies started in leaves [`start`, `end`), and of those whose
    audit key handover is there (the ceremony it names, or when the log's PAN mask hid
    the name, the last audit rotation started before it, by the same officer, to the
    key it hands over to)."""
    index = audit_leaves.c.leaf_index
    payload = audit_entries.c.payload
    found = _leaves(
        engine,
        index >= start,
        index < end,
        or_(payload.startswith(_prefix(START)), payload.startswith(_prefix(HANDOVER_ACTION))),
    )
    ids = set()
    for at, text in found:
        entry = json.loads(text)
        if entry.get("outcome") != "success":
            continue
        if entry.get("action") == START:
            ids.add(str(entry.get("key_id")))
            continue
        named = entry.get("details", {}).get("ceremony")
        if isinstance(named, str) and "*" not in named:
            # The ceremony the handover names (review 27 A2); the verifier links them by
            # it. A name the log's PAN mask hid falls back to the start below.
            ids.add(named)
            continue
        new_key = str(entry.get("details", {}).get("new_key", ""))
        version = new_key.removeprefix("cofre-audit-v")
        if not version.isdigit():
            continue
        starts = _leaves(
            engine,
            index < min(at, size),
            payload.startswith(_prefix(START)),
            payload.contains(f'"new_version":{int(version)},', autoescape=True),
        )
        for _, candidate in reversed(starts):
            started = json.loads(candidate)
            if started.get("actor") == entry.get("actor"):
                ids.add(str(started.get("key_id")))
                break
    return ids


def dual_control_records(
    engine: Engine, store: AuditStore, *, start: int, end: int, size: int
) -> list[dict[str, Any]]:
    """The start, proposal and approval entries of every ceremony started (or handed
    over) in leaves [`start`, `end`), in the tree of `size`, each with its leaf index,
    payload and inclusion proof, oldest first."""
    records = []
    for ceremony in sorted(_started(engine, start, end, size)):
        payload = audit_entries.c.payload
        found = _leaves(
            engine,
            audit_leaves.c.leaf_index < size,
            or_(*(payload.startswith(_prefix(action)) for action in _ACTIONS)),
            payload.contains(f'"key_id":{json.dumps(ceremony)}', autoescape=True),
        )
        records += [
            {
                "index": index,
                "payload": text,
                "proof": [hash_b64(h) for h in store.inclusion_proof(index, size)],
            }
            for index, text in found
            if json.loads(text).get("key_id") == ceremony
        ]
    return sorted(records, key=lambda record: int(record["index"]))


def dual_control_json(
    engine: Engine, store: AuditStore, *, start: int, end: int, size: int
) -> bytes:
    """``keys/dual_control.json``: the `dual_control_records`, indented JSON."""
    records = dual_control_records(engine, store, start=start, end=end, size=size)
    return json.dumps(records, indent=2).encode()
