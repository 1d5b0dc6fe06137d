"""The SQL statements a vault runs while a test watches its engine."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from vault.storage import rawsql


@contextmanager
def capture_session_reads(engine: Engine) -> Iterator[list[str]]:
    """The SELECTs of `capture_sessions` run on `engine` inside the block, in order (the
    capture tests count the reads a refusal costs)."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "capture_sessions" in statement:
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)


@contextmanager
def every_statement(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The SQL text of every statement run on `engine` inside the block, in order, the
    group committer's driver-cursor statements (`vault.storage.rawsql`) included, never
    their parameters: what a path runs, for tests that two answers took the same one."""
    seen: list[str] = []
    original = rawsql._run

    def noted(connection: Connection, sql: str, params: Any, **options: Any) -> Any:
        seen.append(sql)
        return original(connection, sql, params, **options)

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    monkeypatch.setattr(rawsql, "_run", noted)
    sa.event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)
        monkeypatch.setattr(rawsql, "_run", original)
