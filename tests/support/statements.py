"""The SQL statements a vault runs while a test watches its engine."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine


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
