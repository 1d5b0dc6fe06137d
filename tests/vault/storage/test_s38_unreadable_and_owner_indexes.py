"""Migration 0024's two indexes serve the reads they were made for (session 38): the
unreadable-row records a running rotation's status reads (rot38), never a scan of the
audit log, and an identity's open capture sessions (cap38), searched by their owner
rather than through every identity's open sessions."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, select, text

from audit.schema import audit_entries
from tests.vault.storage.test_query_plans import _partial_index_reads, _plan
from vault._rotation_unreadable import ROW_UNREADABLE, UNREADABLE_RECORDS

# `vault.operations.capture._refuse_past_live`'s count, in the plans' placeholders.
_OPEN_SESSIONS = (
    "SELECT count(*), min(expires_at) FROM capture_sessions"
    " WHERE expires_at > ? AND owner = ? AND uses < max_uses"
)


def test_the_unreadable_row_records_are_read_through_their_partial_index(engine: Engine) -> None:
    assert f'{{"action":"{ROW_UNREADABLE}",%' in UNREADABLE_RECORDS
    statement = select(audit_entries.c.payload).where(text(UNREADABLE_RECORDS))
    with engine.begin() as connection:
        sql = str(statement.compile(dialect=connection.dialect))
        plan = _plan(connection, sql, [], 0)
        _partial_index_reads(connection, plan, "ix_audit_entries_rotation_row_unreadable")


def test_an_identitys_open_capture_sessions_are_counted_through_the_owner_index(
    engine: Engine,
) -> None:
    params: list[object] = [datetime(2026, 12, 6, tzinfo=UTC), "spiffe://cofre/store"]
    with engine.begin() as connection:
        plan = _plan(connection, _OPEN_SESSIONS, params, 0)
    assert "ix_capture_sessions_owner_expires_at" in plan, plan
