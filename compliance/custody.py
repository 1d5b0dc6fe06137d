"""The key custodians' acknowledgements an evidence bundle carries (``keys/custody.json``),
each tied to the audit entry that recorded it, so the offline verifier checks it without
trusting the file (PCI DSS 3.6.1.2, 3.7.8).

IN PCI SCOPE (as evidence). A record is what `vault.custody.Custody.acknowledgements`
lists (identity, time, statement, signature, signing key) plus its entry's leaf
``index``, the entry's canonical ``payload`` and its inclusion ``proof`` in the bundle's
covering head: an acknowledgement recorded before the period is proven too. One recorded
after the covering head (not yet in a signed tree) waits for the next bundle.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, select

from audit.merkle import hash_b64
from audit.schema import READ_ONLY, audit_entries, audit_leaves
from audit.store import AuditStore


def custody_records(
    engine: Engine, store: AuditStore, acknowledgements: list[dict[str, Any]], size: int
) -> list[dict[str, Any]]:
    """`acknowledgements` (each with its ``entry_id``) with their leaf index, audit entry
    and inclusion proof in the tree of `size`, oldest first; those not in that tree are
    left out."""
    ids = [int(a["entry_id"]) for a in acknowledgements if "entry_id" in a]
    leaves: dict[int, tuple[int, str]] = {}
    if ids:
        query = (
            select(audit_leaves.c.entry_id, audit_leaves.c.leaf_index, audit_entries.c.payload)
            .join(audit_entries, audit_entries.c.id == audit_leaves.c.entry_id)
            .where(audit_leaves.c.entry_id.in_(ids), audit_leaves.c.leaf_index < size)
        )
        with engine.execution_options(**READ_ONLY).connect() as connection:
            for entry_id, index, payload in connection.execute(query):
                leaves[int(entry_id)] = (int(index), str(payload))
    out = []
    for acknowledgement in acknowledgements:
        found = leaves.get(int(acknowledgement.get("entry_id", -1)))
        if found is None:
            continue
        index, payload = found
        out.append(
            {
                **acknowledgement,
                "index": index,
                "payload": payload,
                "proof": [hash_b64(h) for h in store.inclusion_proof(index, size)],
            }
        )
    return sorted(out, key=lambda record: int(record["index"]))


def custody_json(
    engine: Engine, store: AuditStore, acknowledgements: list[dict[str, Any]], size: int
) -> bytes:
    """``keys/custody.json``: the `custody_records`, indented JSON."""
    return json.dumps(custody_records(engine, store, acknowledgements, size), indent=2).encode()
