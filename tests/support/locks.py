"""Forcing the order of two calls on PostgreSQL without sleeps: a row locked by another
session until released (the call that reaches it waits there), a count of the sessions
waiting on a lock, and calls run each in its own thread. On SQLite, whose write
transactions exclude each other, the lock is not taken and the calls run in turn."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, event

from vault.storage import rawsql


def _sessions_waiting(engine: Engine) -> int:
    """How many sessions of this database wait on a lock now (PostgreSQL)."""
    with engine.connect() as c:
        waiting: int = c.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            )
        ).scalar_one()
    return waiting


def waiting_on_locks(engine: Engine, count: int) -> None:
    """Wait until `count` sessions of this database wait on a lock (bounded: fails only
    on a hang)."""
    deadline = time.monotonic() + 30
    while True:
        waiting = _sessions_waiting(engine)
        if waiting >= count:
            return
        assert time.monotonic() < deadline, f"{waiting} of {count} sessions came to the lock"
        time.sleep(0.01)


class Calls:
    """Calls run each in its own thread; `join` waits for them (bounded: fails only on
    a hang) and returns what each answered or raised."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.results: list[object] = []

    def start(self, call: Callable[[], object]) -> None:
        index = len(self.results)
        self.results.append(None)

        def run() -> None:
            try:
                self.results[index] = call()
            except Exception as exc:  # noqa: BLE001 - the test reads it
                self.results[index] = exc

        thread = threading.Thread(target=run)
        self.threads.append(thread)
        thread.start()

    def join(self) -> list[object]:
        for thread in self.threads:
            thread.join(timeout=60)
            assert not thread.is_alive()
        return self.results


def done_or_waiting(engine: Engine, calls: Calls, index: int, count: int) -> None:
    """Wait until call `index` answered or `count` sessions wait on a lock (bounded:
    fails only on a hang)."""
    if engine.dialect.name != "postgresql":
        return
    deadline = time.monotonic() + 30
    thread = calls.threads[index]
    while thread.is_alive():
        if _sessions_waiting(engine) >= count:
            return
        assert time.monotonic() < deadline, "the call neither answered nor came to a lock"
        time.sleep(0.01)


class HeldRow:
    """The row `select_for_update` names, locked by another session (PostgreSQL) until
    `release`; with `one`, the row must exist."""

    def __init__(
        self,
        engine: Engine,
        select_for_update: str,
        params: Mapping[str, object],
        *,
        one: bool = True,
    ) -> None:
        self.engine = engine
        self.connection = engine.connect()
        if engine.dialect.name == "postgresql":
            self.connection.begin()
            found = self.connection.execute(sa.text(select_for_update), dict(params))
            if one:
                found.one()

    def waiters(self, count: int) -> None:
        if self.engine.dialect.name == "postgresql":
            waiting_on_locks(self.engine, count)

    def release(self) -> None:
        if self.engine.dialect.name == "postgresql":
            self.connection.rollback()
        self.connection.close()


def answered_while_held(
    held: HeldRow, first: Callable[[], object], second: Callable[[], object]
) -> tuple[object, object, bool]:
    """`first` comes to the row `held` holds (PostgreSQL) and waits there; `second`
    comes meanwhile. What each answered, and whether `second` was answered while
    `first` was held (PostgreSQL: it did not wait for `first`)."""
    calls = Calls()
    calls.start(first)
    held.waiters(1)
    calls.start(second)
    done_or_waiting(held.engine, calls, 1, 2)
    second_first = not calls.threads[1].is_alive()
    held.release()
    one, two = calls.join()
    return one, two, second_first


def _is_deadlock(exc: BaseException) -> bool:
    return getattr(getattr(exc, "orig", exc), "sqlstate", None) == "40P01"


@contextmanager
def deadlocks_seen(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every 40P01 (PostgreSQL's deadlock) met while the block runs, from SQLAlchemy's
    statements (`handle_error`) and from the driver's cursor of `vault.storage.rawsql`,
    which SQLAlchemy's events never see (the rate charge's UPDATE runs there: review 13
    found the first detector blind to it)."""
    seen: list[str] = []

    def on_error(context: Any) -> None:
        if _is_deadlock(context.original_exception):
            seen.append("sqlalchemy")

    original = rawsql._run

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        except Exception as exc:
            if _is_deadlock(exc):
                seen.append("rawsql")
            raise

    monkeypatch.setattr(rawsql, "_run", run)
    event.listen(engine, "handle_error", on_error)
    try:
        yield seen
    finally:
        event.remove(engine, "handle_error", on_error)
