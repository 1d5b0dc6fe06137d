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

from typing import Final

from sqlalchemy import Connection, select, text

from audit.retention import COMPLETE_RECORDS, data_key_retired
from audit.schema import audit_entries

_COMPLETIONS: Final = select(audit_entries.c.payload).where(text(COMPLETE_RECORDS))


def retired_through(connection: Connection) -> int:
    """The highest data-key version the audit log records retired (0 when none): every
    version up to it is retired for good. Raises what the read raises."""
    versions = (data_key_retired(payload) for payload in connection.execute(_COMPLETIONS).scalars())
    return max((v for v in versions if v is not None), default=0)
