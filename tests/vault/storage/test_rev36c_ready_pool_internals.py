"""The readiness reserve (`ReadinessReservePool`) against SQLAlchemy's pool internals
(review 36c): where a reserve connection goes back to, what the pool reports, the
engine's events on reserve connections, and what a dead database connection does to
the reserve. Real SQLite files and a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from vault.storage.database import (
    ReadinessReservePool,
    create_database_engine,
    readiness_connections,
)


def _reserve(engine: Engine) -> ReadinessReservePool:
    pool = engine.pool
    assert isinstance(pool, ReadinessReservePool)
    return pool


def test_a_reserve_connection_goes_back_to_the_reserve_with_the_pragmas(tmp_path: Path) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'c.sqlite3'}", pool_size=2)
    try:
        with readiness_connections(), engine.connect() as connection:
            pragmas = [
                connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "foreign_keys", "busy_timeout")
            ]
            connection.rollback()  # the reads' autobegun transaction
            with connection.begin():  # the writer flock: taken and released
                connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        with engine.connect() as load, load.begin():
            load.exec_driver_sql("INSERT INTO t VALUES (1)")  # the flock was released
        pool = _reserve(engine)
        reserve = pool._reserve
        assert reserve is not None
        assert (reserve.checkedin(), reserve.checkedout()) == (1, 0)
        assert (pool.checkedin(), pool.checkedout()) == (1, 0)  # the load's own
        assert pragmas[:2] == ["wal", 1]
        assert pragmas[2] > 0
    finally:
        engine.dispose()


def test_the_session_settings_and_the_password_event_reach_reserve_connections(
    pg_database: str,
) -> None:
    asked: list[int] = []

    def password() -> str:
        asked.append(1)
        return "unused-by-trust-auth"

    engine = create_database_engine(
        pg_database, statement_timeout_ms=4321, password_provider=password
    )
    try:
        with readiness_connections(), engine.connect() as connection:
            timeout = connection.exec_driver_sql("SHOW statement_timeout").scalar()
        assert timeout == "4321ms"
        assert asked == [1]
        reserve = _reserve(engine)._reserve
        assert reserve is not None
        assert reserve.checkedin() == 1
    finally:
        engine.dispose()


def _terminate_others(url: str, engine: Engine) -> None:
    admin = create_engine(url.rsplit("/", 1)[0] + "/postgres")
    database = engine.url.database
    try:
        with admin.connect() as connection:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            )
            connection.commit()
    finally:
        admin.dispose()


@pytest.mark.parametrize("noticed_by", ["readiness", "load"])
def test_one_dead_connection_noticed_drops_the_reserves_older_ones_too(
    pg_database: str, noticed_by: str
) -> None:
    """Without a pre-ping, the pool drops every connection older than the first that
    was found dead (a database restart, a failover). The reserve's were not: readiness
    met each of them dead in turn (FIFO), and two failed probes in a row take a pod out
    of service (deploy/k8s: failureThreshold 2), every pod at once."""
    engine = create_database_engine(pg_database)
    try:
        with readiness_connections():  # readiness runs overlapping: two reserve connections
            first, second = engine.connect(), engine.connect()
            for connection in (first, second):
                connection.exec_driver_sql("SELECT 1")
            first.close()
            second.close()
        with engine.connect() as load:
            load.exec_driver_sql("SELECT 1")
        _terminate_others(pg_database, engine)  # the database restarted
        answers = []
        if noticed_by == "load":
            with pytest.raises(DBAPIError), engine.connect() as load:
                load.exec_driver_sql("SELECT 1")
        for _ in range(3):
            try:
                with readiness_connections(), engine.connect() as connection:
                    connection.exec_driver_sql("SELECT 1")
                answers.append("ok")
            except DBAPIError:
                answers.append("dead")
        expected = ["dead", "ok", "ok"] if noticed_by == "readiness" else ["ok", "ok", "ok"]
        assert answers == expected
    finally:
        engine.dispose()


def test_a_dispose_while_readiness_holds_a_reserve_connection(tmp_path: Path) -> None:
    """The stop disposes of the pool while a readiness check may still hold one of the
    reserve's (its thread abandoned): its close afterwards raises nothing, and the
    engine's new pool has a reserve of its own."""
    engine = create_database_engine(f"sqlite:///{tmp_path / 'd.sqlite3'}", pool_size=2)
    try:
        with readiness_connections():
            held = engine.connect()
            held.exec_driver_sql("SELECT 1")
            engine.dispose()
            held.close()
            with engine.connect() as fresh:
                assert fresh.exec_driver_sql("SELECT 1").scalar() == 1
        reserve = _reserve(engine)._reserve
        assert reserve is not None
        assert reserve.checkedin() == 1
    finally:
        engine.dispose()
