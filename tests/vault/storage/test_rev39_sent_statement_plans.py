"""Review rev39 of migrations 0023 and 0024: the statements the vault sends, as sent
(with their parameters and the rotation's date bound), read through the indexes made
for them. tests/vault/storage/test_s38_unreadable_and_owner_indexes.py pins copies
(the unreadable-row read without its ``created_at`` bound, the capture count written
out by hand); a copy can keep its plan while the statement sent loses it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, Engine, event

from tests.vault.storage.test_query_plans import _partial_index_reads
from vault._retired_keys import retired_through
from vault._rotation_unreadable import recorded
from vault.operations.capture import _refuse_past_live


def _sent(engine: Engine, table: str, call: Callable[[Connection], object]) -> tuple[str, Any]:
    """The one statement on `table` that `call` sends, with its parameters."""
    sent: list[tuple[str, Any]] = []

    def capture(*args: Any) -> None:
        if f"FROM {table}" in args[2]:  # not the driver's own (BEGIN, PRAGMA...)
            sent.append((args[2], args[3]))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with engine.connect() as connection:
            call(connection)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    [statement] = sent
    return statement


def _plan_of(connection: Connection, sql: str, params: Any) -> str:
    sqlite = connection.dialect.name == "sqlite"
    if not sqlite:  # an empty table would rightly be scanned; an index must serve it
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
    rows = connection.exec_driver_sql(
        ("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + sql, params
    )
    return "\n".join(str(row[-1] if sqlite else row[0]) for row in rows)


def test_the_unreadable_rows_read_as_sent_goes_through_its_partial_index(engine: Engine) -> None:
    ceremony = SimpleNamespace(
        id="c-0123456789abcdef", created_at=datetime(2026, 12, 1, tzinfo=UTC)
    )
    sql, params = _sent(engine, "audit_entries", lambda c: recorded(c, ceremony))  # type: ignore[arg-type]
    assert "created_at" in sql
    with engine.begin() as connection:
        plan = _plan_of(connection, sql, params)
        _partial_index_reads(connection, plan, "ix_audit_entries_rotation_row_unreadable")


def _unproven(details: dict[str, Any], document: object) -> int | None:
    return None


def test_the_retired_versions_read_as_sent_goes_through_its_partial_index(engine: Engine) -> None:
    # No completion in the log, so no start is asked to be proven (session 40's `proven`).
    sql, params = _sent(engine, "audit_entries", lambda c: retired_through(c, _unproven))
    with engine.begin() as connection:
        plan = _plan_of(connection, sql, params)
        _partial_index_reads(connection, plan, "ix_audit_entries_rotation_complete")


def test_the_open_capture_sessions_count_as_sent_goes_through_the_owner_index(
    engine: Engine,
) -> None:
    now = datetime(2026, 12, 6, tzinfo=UTC)
    sql, params = _sent(
        engine, "capture_sessions", lambda c: _refuse_past_live(c, "spiffe://cofre/store", 5, now)
    )
    with engine.begin() as connection:
        plan = _plan_of(connection, sql, params)
    assert "ix_capture_sessions_owner_expires_at" in plan, plan
