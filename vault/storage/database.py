"""Engines for SQLite (embedded default) and PostgreSQL, and schema migration.

IN PCI SCOPE. SQLite runs in WAL mode with ``synchronous=FULL`` (a commit is on disk
before it returns), foreign keys on, and every transaction opened with ``BEGIN
IMMEDIATE`` so concurrent writers queue on the busy timeout instead of failing on a
lock upgrade. PostgreSQL uses psycopg 3 with a connection pool and pre-ping.
Database errors are translated into `StorageUnavailable` by the callers' edge helpers.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import ConnectionPoolEntry

from vault.storage import schema_version

SQLITE_BUSY_TIMEOUT_MS = 30_000


def as_utc(value: datetime | None) -> datetime | None:
    """`value` with UTC attached when the driver returned it naive (SQLite does; everything
    Cofre stores is UTC)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def normalize_url(url: str) -> str:
    """Return `url` with the psycopg 3 driver named for PostgreSQL URLs."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def create_database_engine(
    url: str,
    *,
    pool_size: int = 10,
    statement_timeout_ms: int = 5000,
    password_provider: Callable[[], str] | None = None,
) -> Engine:
    """Return an Engine for `url` (``sqlite:///path`` or ``postgresql://...``).

    On PostgreSQL every statement is bounded by `statement_timeout_ms`: a database that
    has become too slow fails the operation (503 storage_unavailable, nothing written)
    instead of holding callers and their connections indefinitely. `password_provider`,
    when given, is asked for the password of every new connection.
    """
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=pool_size,
        )
        _configure_sqlite(engine)
        return engine
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=10,
        connect_args={
            "connect_timeout": 5,
            "options": f"-c statement_timeout={int(statement_timeout_ms)}",
        },
    )
    if password_provider is not None:
        provider = password_provider

        @event.listens_for(engine, "do_connect")
        def _fresh_password(
            _dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]
        ) -> None:
            # Short-lived credentials (RDS IAM tokens): a new one for every new connection.
            cparams["password"] = provider()

    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Writers take the write lock up front, so two of them never deadlock upgrading
        # a read lock; readers (`audit.schema.READ_ONLY`) begin deferred and run beside.
        if connection.get_execution_options().get("cofre_read_only"):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision, under the migration lock (see
    `vault.storage.schema_version.migrate`)."""
    schema_version.migrate(engine)
