"""Which data-key versions the audit log records retired (session 38).

IN PCI SCOPE. A data rotation that completes erases the old version's wrapped bytes from
``data_keys`` and writes a ``key.rotation.complete`` entry naming it. The erasure is the
database's alone: a writer of the database (a stolen credential, a DBA, a backup
restored with edits) who put the wrapped bytes back from a backup had a key the KEK
still unwraps, and every card sealed under it, deleted ones included, opened again (PCI
DSS 3.7.5: a retired key must not be usable). The log is tamper-evident and witnessed, so
the vault takes a version's retirement from there: every version up to the highest one
a data rotation's completion names is refused (versions only grow, and a rotation
retires the one before its new one).

The completion records are read through migration 0023's partial index
(``ix_audit_entries_rotation_complete``): a few a year, whatever the log's size.
Retention carries the newest data retirement forward when it drops its partition
(`audit.retention`), as it does the key registry's records.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import Connection, select, text

from audit.retention import (
    COMPLETE_RECORDS,
    START_RECORDS,
    data_key_retired,
    record_details,
    record_object,
)
from audit.schema import audit_entries

_COMPLETIONS: Final = select(audit_entries.c.payload).where(text(COMPLETE_RECORDS))
# Whether the officers' signatures prove a data rotation's start: its details with the
# ceremony id under ``ceremony``, its document (`vault.key_registry.KeyRegistry.signed_time`).
ProvenStart = Callable[[dict[str, Any], object], int | None]


def _started_from(connection: Connection, ceremony: str, proven: ProvenStart) -> int | None:
    """The data-key version the first start of data rotation `ceremony` whose document
    proves it (its officers' signed proposal and approvals) rotated from; None when no
    start of it is proven. The first: the vault writes it in the transaction of the
    approval that completes the quorum, so a copy of its signatures written after it onto
    another start of that ceremony (naming another version) comes later in the log."""
    payload = audit_entries.c.payload
    starts = (
        select(payload)
        .where(
            text(START_RECORDS),
            payload.contains(f'"key_id":{json.dumps(ceremony)}', autoescape=True),
        )
        .order_by(audit_entries.c.id)
    )
    for found in connection.execute(starts).scalars():
        parsed = record_details(found)
        if parsed is None or parsed[0].get("key_id") != ceremony:
            continue
        entry, details = parsed
        if entry.get("outcome") != "success" or details.get("kind") != "data":
            continue
        if proven({**details, "ceremony": ceremony}, entry.get("document")) is None:
            continue
        version = details.get("old_version")
        return version if type(version) is int else None
    return None


def retired_through(connection: Connection, proven: ProvenStart) -> int:
    """The highest data-key version the audit log records retired (0 when none): every
    version up to it is retired for good. A completion counts only when it names the
    version the first proven start of its ceremony (`_started_from`) rotated from
    (session 40: a well-formed completion a database writer inserted, naming a high
    version, retired every data key for good); one that does not is passed over.
    Raises what the read raises."""
    highest = 0
    for payload in connection.execute(_COMPLETIONS).scalars():
        version = data_key_retired(payload)
        entry = record_object(payload) if version is not None else None
        ceremony = None if entry is None else entry.get("key_id")
        if version is None or version <= highest or not isinstance(ceremony, str):
            continue
        if _started_from(connection, ceremony, proven) == version:
            highest = version
    return highest
