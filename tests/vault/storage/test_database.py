"""SQLite writers queue on a lock file beside the database (issue 21): held from BEGIN
IMMEDIATE until COMMIT or ROLLBACK has returned, never by readers, and across engines
(as across the worker processes of `cofre serve`)."""

from __future__ import annotations

import fcntl
import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text

from audit.schema import READ_ONLY
from vault.storage import database
from vault.storage.database import create_database_engine, migrate, single_read
from vault.storage.rawsql import fetch_all


@contextmanager
def _engine(path: Path) -> Iterator[Engine]:
    engine = create_database_engine(f"sqlite:///{path}")
    try:
        yield engine
    finally:
        engine.dispose()


def _held(lock: Path) -> bool:
    """Whether someone holds the writer lock (asked through a descriptor of our own)."""
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@pytest.mark.parametrize("ending", ["commit", "rollback", "error"])
def test_a_write_transaction_holds_the_writer_lock_until_it_ends(
    tmp_path: Path, ending: str
) -> None:
    database = tmp_path / "db.sqlite3"
    lock = tmp_path / "db.sqlite3.writer-lock"
    with _engine(database) as engine:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE t (x INTEGER)"))
        assert not _held(lock)
        with engine.connect() as connection:
            transaction = connection.begin()
            connection.execute(text("INSERT INTO t VALUES (1)"))
            assert _held(lock)
            if ending == "commit":
                transaction.commit()
            elif ending == "rollback":
                transaction.rollback()
            else:
                with pytest.raises(ZeroDivisionError), connection.begin_nested():
                    raise ZeroDivisionError
                connection.close()  # returned to the pool: rolled back there
            assert not _held(lock)
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT count(*) FROM t")).scalar()
        assert rows == (1 if ending == "commit" else 0)


def test_readers_do_not_take_the_writer_lock_and_other_engines_queue(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite3"
    lock = tmp_path / "db.sqlite3.writer-lock"
    with _engine(database) as first, _engine(database) as second:
        with first.begin() as connection:
            connection.execute(text("CREATE TABLE t (x INTEGER)"))
        with second.connect().execution_options(**READ_ONLY) as reader, reader.begin():
            assert reader.execute(text("SELECT count(*) FROM t")).scalar() == 0
            assert not _held(lock)
        with first.begin() as writer:
            writer.execute(text("INSERT INTO t VALUES (1)"))
            assert _held(lock)
        with second.begin() as writer:
            writer.execute(text("INSERT INTO t VALUES (2)"))
        with second.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM t")).scalar() == 2


def test_a_single_read_leaves_no_autocommit_behind(database_url: str) -> None:
    """The early rate check's connection runs in autocommit on PostgreSQL (one round trip,
    no BEGIN and ROLLBACK); the pool must hand the same connection to the committer in a
    transaction again, or a group's statements would each commit on their own."""
    engine = create_database_engine(database_url, pool_size=1)
    try:
        migrate(engine)
        with single_read(engine).connect() as connection:
            rows = fetch_all(connection, "SELECT count(*) FROM tokens", [])
            raw = connection.connection.dbapi_connection
            if engine.dialect.name == "postgresql":
                assert raw.autocommit  # type: ignore[union-attr]
        assert rows == [(0,)]
        with engine.connect() as connection:
            assert connection.connection.dbapi_connection is raw  # the pool's one
            connection.execute(text("CREATE TABLE t_single_read (x INTEGER)"))
            connection.rollback()
            if engine.dialect.name == "postgresql":
                assert not raw.autocommit  # type: ignore[union-attr]
        with engine.connect() as connection:
            # Rolled back: it was in a transaction (SQLite's DDL is transactional too).
            tables = inspect(connection).get_table_names()
        assert "t_single_read" not in tables
    finally:
        engine.dispose()


def test_a_writer_waiting_for_the_lock_looks_often_then_backs_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 21: a single call's commit group holds the writer lock a few milliseconds,
    so a waiter looks every 0.2 ms for its first 30 ms (polled every 2 ms, the lock sat
    free between groups); past that (a batch holds it ~150 ms) it backs off to 2 ms.
    On a simulated clock: no test here waits on wall-clock time."""
    now = [0.0]
    pauses: list[float] = []
    attempts = [0]

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds

    def flock(_fd: int, _op: int) -> None:
        attempts[0] += 1
        if now[0] < 0.1:  # held by another writer for 100 ms
            raise BlockingIOError

    monkeypatch.setattr(database.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(database.time, "sleep", sleep)
    monkeypatch.setattr(database.fcntl, "flock", flock)
    database._take_writer_lock(0)
    starts = itertools.accumulate(pauses[:-1], initial=0.0)
    fast = [p for p, at in zip(pauses, starts, strict=True) if at <= 0.03]
    assert set(fast) == {0.0002}
    assert max(pauses) == 0.002
    assert 0.1 <= now[0] < 0.1 + 0.002 + 1e-9  # taken within one pause of its release
    assert attempts[0] < 250  # ~150 at 0.2 ms, then ~40 at up to 2 ms
