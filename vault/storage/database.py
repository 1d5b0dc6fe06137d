"""Engines for SQLite (embedded default) and PostgreSQL, and schema migration.

IN PCI SCOPE. SQLite runs in WAL mode with ``synchronous=FULL`` (a commit is on disk
before it returns), foreign keys on, and every transaction opened with ``BEGIN
IMMEDIATE`` so concurrent writers queue on the busy timeout instead of failing on a
lock upgrade; writers first queue for that lock on a lock file beside the database
(across threads and worker processes, polled every 2 ms at most, where SQLite's busy
handler sleeps up to 100 ms between attempts). PostgreSQL uses psycopg 3 with a
connection pool, without pre-ping: a dead pooled connection fails its one operation
(503, nothing written), and SQLAlchemy then recycles the whole pool.
Database errors are translated into `StorageUnavailable` by the callers' edge helpers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

from vault.storage import schema_version

SQLITE_BUSY_TIMEOUT_MS = 30_000
_SQLITE_READONLY = 8  # the primary result code (the extended ones add high bits)


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


# Readiness's own connections (`readiness_connections`): as many as readiness runs may
# overlap in one process (the health port's, the mTLS port's, a worker's beat), and how
# long one waits for another's, far inside the kubelet probe's timeout (deploy/k8s: 3 s).
READY_CONNECTIONS: Final = 3
READY_CHECKOUT_SECONDS: Final = 1.0
_readiness = threading.local()


@contextlib.contextmanager
def readiness_connections() -> Iterator[None]:
    """In this block, this thread's checkouts from a Cofre engine's pool come from the
    pool's reserve for readiness (`ReadinessReservePool`), never from the connections
    the load uses. Review 36: readiness waited the pool timeout (10 s) for a connection
    when the load held them all, past the probe's 3 s, and every pod under that load
    went unready at once; readiness must say whether the database answers."""
    outer = getattr(_readiness, "active", False)
    _readiness.active = True
    try:
        yield
    finally:
        _readiness.active = outer


class ReadinessReservePool(QueuePool):
    """The engine's pool, plus `READY_CONNECTIONS` of its own (opened when first
    needed, by the same creator and events: the same URL, TLS, IAM token) that serve the
    threads inside `readiness_connections`, each waited for at most
    `READY_CHECKOUT_SECONDS`. They count toward the server's ``max_connections``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reserve: QueuePool | None = None
        self._reserve_lock = threading.Lock()

    def _do_get(self) -> ConnectionPoolEntry:
        if getattr(_readiness, "active", False):
            return self._reserved()._do_get()
        return super()._do_get()

    def _reserved(self) -> QueuePool:
        with self._reserve_lock:
            if self._reserve is None:
                self._reserve = QueuePool(
                    self._creator,
                    pool_size=READY_CONNECTIONS,
                    max_overflow=0,
                    timeout=READY_CHECKOUT_SECONDS,
                    recycle=self._recycle,
                    dialect=self._dialect,
                    reset_on_return=self._reset_on_return,
                    _dispatch=self.dispatch,
                )
            return self._reserve

    def _invalidate(
        self, connection: Any, exception: BaseException | None = None, _checkin: bool = True
    ) -> None:
        # One dead connection found (no pre-ping: a database restart, a failover) drops
        # every older one at its next checkout, the reserve's too (review 36c): the
        # engine tells this pool only, and readiness otherwise met each reserve
        # connection dead in turn, two failed probes (failureThreshold 2) on every pod.
        super()._invalidate(connection, exception, _checkin)
        with self._reserve_lock:
            if self._reserve is not None:
                self._reserve._invalidate_time = self._invalidate_time

    def dispose(self) -> None:
        super().dispose()
        with self._reserve_lock:
            if self._reserve is not None:
                self._reserve.dispose()


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
            poolclass=ReadinessReservePool,
            pool_size=pool_size,
            max_overflow=pool_size,
        )
        _configure_sqlite(engine)
        return engine
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping: it was a round trip (and a statement on PostgreSQL) at every
        # checkout, two or more per request (issue 21). A connection that died while
        # pooled (PostgreSQL restarted) fails the statement that uses it with a
        # disconnect error, which the callers' edges translate to StorageUnavailable
        # (503, nothing written); SQLAlchemy then invalidates every connection the pool
        # made before it, so one operation fails, not one per pooled connection. The
        # recycle age stays under the idle timeouts of the middle boxes a connection
        # may cross (an AWS NLB drops idle flows after 350 s).
        pool_pre_ping=False,
        poolclass=ReadinessReservePool,  # readiness has connections of its own
        pool_recycle=300,
        pool_timeout=10,
        connect_args={
            "connect_timeout": 5,
            # Custom plans only: psycopg prepares a statement at its fifth run, and
            # PostgreSQL then may keep a generic plan costed on the table as it was
            # (empty at start-up): the oracle guard's read then searched its primary key
            # by identity alone and filtered the bucket, a walk of every row the
            # identity had, ~1,400 buffers and 1.7 ms of PostgreSQL's CPU per tokenize
            # after 3,000 of them, growing with each (issue 21, pg_stat_statements).
            # Planning each run costs tens of microseconds; a plan that scans, more.
            "options": (
                f"-c statement_timeout={int(statement_timeout_ms)}"
                " -c plan_cache_mode=force_custom_plan"
            ),
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
    lock_path = _writer_lock_path(engine)
    writer_locks: dict[int, int] = {}  # id(DBAPI connection) -> its lock file descriptor

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
        if lock_path is not None:
            writer_locks[id(dbapi_connection)] = os.open(
                lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )

    @event.listens_for(engine, "close")
    def _on_close(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        fd = writer_locks.pop(id(dbapi_connection), None)
        if fd is not None:
            os.close(fd)  # releases the lock if a failed connection still held it

    @event.listens_for(engine, "handle_error")
    def _read_only_connection(context: ExceptionContext) -> None:
        # A connection SQLite opened while the file could not be written (permissions,
        # a read-only mount, an immutable flag) stays read-only after the file can be
        # written again, and one that met such a fault may too: drop it, and the pool's
        # older ones, as a dead connection is dropped, so the store recovers by itself
        # once the file is writable (review 39).
        code = getattr(context.original_exception, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF == _SQLITE_READONLY:
            context.is_disconnect = True

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Writers take the write lock up front, so two of them never deadlock upgrading
        # a read lock; readers (`audit.schema.READ_ONLY`) begin deferred and run beside.
        if connection.get_execution_options().get("cofre_read_only"):
            connection.exec_driver_sql("BEGIN")
            return
        fd = writer_locks.get(id(connection.connection.dbapi_connection))
        if fd is not None:
            _take_writer_lock(fd)
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    if lock_path is not None:
        _release_after(engine, writer_locks)


_FAST_POLL_SECONDS = 0.03


def _writer_lock_path(engine: Engine) -> str | None:
    """``<database file>.writer-lock`` (None for an in-memory database)."""
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database + ".writer-lock"


def _take_writer_lock(fd: int) -> None:
    """Queue for the database's write lock on a lock file, across threads and processes
    (the workers of `cofre serve`). SQLite's own busy handler sleeps 1, 2, 5 ... 100 ms
    between attempts, so two committers that alternate lose most of their time asleep
    (issue 21's profile). Here a waiter looks again every 0.2 ms for its first
    `_FAST_POLL_SECONDS`, a few commit groups' holds: under single tokenize load a group
    holds the lock ~3-5 ms and the lock is ~80% busy, so a waiter that slept up to 2 ms
    between looks left it free between one group and the next. Past that it backs off
    to 2 ms: a batch of 1,000 holds the lock ~150 ms, and waking every 0.2 ms for that
    long costs the waiting worker's other threads the GIL. Not fair: a waiter past its
    fast phase looks less often than a newcomer (review 15), a tail-latency trade-off
    that sleep jitter keeps from lining up. Bounded by the busy timeout: after it, the
    caller goes on without this lock and BEGIN IMMEDIATE meets SQLite's own busy wait
    (the same timeout again) and error."""
    started = time.monotonic()
    deadline = started + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.0002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            now = time.monotonic()
            if now > deadline:
                return
            time.sleep(pause)
            if now - started > _FAST_POLL_SECONDS:
                pause = min(pause * 2, 0.002)
        else:
            return


def _release_after(engine: Engine, writer_locks: dict[int, int]) -> None:
    """Release the writer lock once a transaction's COMMIT or ROLLBACK has returned
    (SQLAlchemy's commit/rollback events fire before it, which would let the next writer
    in while this commit still holds SQLite's lock). Wraps this engine's dialect only."""
    dialect = engine.dialect
    commit, rollback = dialect.do_commit, dialect.do_rollback

    def release(connection: Any) -> None:
        # Called with the pool's proxy of the DBAPI connection, or with the connection.
        raw = getattr(connection, "dbapi_connection", None) or connection
        fd = writer_locks.get(id(raw))
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def do_commit(dbapi_connection: Any) -> None:
        try:
            commit(dbapi_connection)
        finally:
            release(dbapi_connection)

    def do_rollback(dbapi_connection: Any) -> None:
        try:
            rollback(dbapi_connection)
        finally:
            release(dbapi_connection)

    dialect.do_commit = do_commit  # type: ignore[method-assign]
    dialect.do_rollback = do_rollback  # type: ignore[method-assign]


def single_read(engine: Engine) -> Engine:
    """`engine` for a connection that runs one read and nothing else (the early rate
    check before a tokenize's HSM calls). On PostgreSQL it runs in autocommit: the
    driver would otherwise send BEGIN before the statement and the pool a ROLLBACK when
    the connection comes back, three round trips where one answers (issue 21). On
    SQLite a read-only connection (`audit.schema.READ_ONLY`'s option), which a plain
    statement on the driver's cursor reads without taking the writer lock. Build it once:
    each call makes a new engine proxy."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine.execution_options(cofre_read_only=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision, under the migration lock (see
    `vault.storage.schema_version.migrate`)."""
    schema_version.migrate(engine)
