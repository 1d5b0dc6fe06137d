"""Multi-row inserts and deletes of the audit log's own rows (queue, leaves, nodes), and
the sequencer's read of the queue, on the transaction's cursor.

IN PCI SCOPE (the audit log's tables; no card data).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from audit.schema import audit_entries

# SQLite takes at most 32,766 parameters in a statement.
_MAX_PARAMETERS: Final = 30_000


def insert_values(
    connection: Connection, into: str, rows: list[tuple[object, ...]], pg_types: tuple[str, ...]
) -> None:
    """Insert `rows` into `into` (``table (columns)``) in one statement or a few, on the
    transaction's own cursor. The drivers' executemany (SQLAlchemy's, for these tables,
    on PostgreSQL) sends a statement per row, and psycopg parses a long ``VALUES`` list's
    placeholders in Python: on PostgreSQL each column goes as one array (`pg_types`,
    in psycopg's binary format: its text format escaped every element in Python, ~15 ms
    of the sequencer's CPU per 1,000 entries) through ``unnest``, on SQLite as a
    multi-row ``VALUES`` (issue 21: the sequencer was
    12-16% of a worker's GIL samples on PostgreSQL). A driver error is raised as
    SQLAlchemy's, as an execute would. (`vault.storage.rawsql` does the same for the
    vault's tables; this package, below the vault, cannot import it.)"""
    if not rows:
        return
    dialect = connection.dialect
    # `into` and `pg_types` are the callers' constants; every value is bound.
    if dialect.name == "postgresql":
        arrays = ", ".join(f"%b::{kind}[]" for kind in pg_types)
        sql = f"INSERT INTO {into} SELECT * FROM unnest({arrays})"  # noqa: S608
        columns = tuple(list(column) for column in zip(*rows, strict=True))
        statements: list[tuple[str, tuple[object, ...]]] = [(sql, columns)]
    else:
        mark = "(" + ", ".join("?" * len(pg_types)) + ")"
        per = max(1, _MAX_PARAMETERS // len(pg_types))
        statements = []
        for start in range(0, len(rows), per):
            chunk = rows[start : start + per]
            sql = f"INSERT INTO {into} VALUES {', '.join([mark] * len(chunk))}"  # noqa: S608
            statements.append((sql, tuple(value for row in chunk for value in row)))
    with _cursor(connection) as run:
        for sql, params in statements:
            run(sql, params)


def insert_queued_entries(
    connection: Connection, rows: Sequence[tuple[str, datetime]]
) -> list[tuple[int, str]]:
    """Insert entries (payload, created_at) and queue each for the sequencer with the
    created_at written for it, on the transaction's cursor, and return the (id, payload)
    of each, in no particular order (SQLite promises none for RETURNING). The queue's
    time is what the database returned for that very row, never matched up in Python:
    a queue row whose time is not its entry's would never be read (`queued_entries`).
    SQLAlchemy's executemany with RETURNING processed every row's parameters and result
    in Python: ~26 ms of the committer's CPU for a batch's 1,000 entries (issue 21). On
    PostgreSQL the columns go as two arrays through ``unnest``, in binary (``%b``:
    psycopg's text array format escapes each payload's quotes with a regex in Python,
    which cost more than SQLAlchemy's way), and the queue rows are written by the same
    statement from its RETURNING (a time read back into Python costs ~0.5 ms of CPU per
    1,000); on SQLite as a multi-row ``VALUES``, the time in SQLAlchemy's own text format
    for it (what it reads back, and what goes into the queue as it is)."""
    if not rows:
        return []
    dialect = connection.dialect
    written: list[tuple[int, str]] = []
    queued: list[tuple[object, ...]] = []
    with _cursor(connection) as run:
        if dialect.name == "postgresql":
            payloads, times = (list(column) for column in zip(*rows, strict=True))
            written += run(_PG_INSERT_QUEUED_ENTRIES, (payloads, times), fetch=True)
            return written
        process = audit_entries.c.created_at.type._cached_bind_processor(dialect)
        per = _MAX_PARAMETERS // 2
        for start in range(0, len(rows), per):
            chunk = rows[start : start + per]
            params = tuple(
                value
                for payload, at in chunk
                for value in (payload, at if process is None else process(at))
            )
            marks = ", ".join(["(?, ?)"] * len(chunk))
            for entry_id, payload, at in run(
                f"INSERT INTO audit_entries (payload, created_at) VALUES {marks} "  # noqa: S608
                "RETURNING id, payload, created_at",
                params,
                fetch=True,
            ):
                written.append((entry_id, payload))
                queued.append((entry_id, at))
    insert_values(connection, "audit_queue (entry_id, created_at)", queued, ("int8", "timestamptz"))
    return written


# One statement: the queue rows are the entries' RETURNING, each with its own time.
_PG_INSERT_QUEUED_ENTRIES: Final = (
    "WITH written AS (INSERT INTO audit_entries (payload, created_at) "
    "SELECT * FROM unnest(%b::text[], %b::timestamptz[]) RETURNING id, payload, created_at), "
    "queued AS (INSERT INTO audit_queue (entry_id, created_at) "
    "SELECT id, created_at FROM written) "
    "SELECT id, payload FROM written"
)


# The queue's entries in order, with the payload each leaf hashes, on SQLite (sqlite3's
# `?` placeholder): one table, where the entry is found by id.
_QUEUED: Final = (
    "SELECT q.entry_id, e.payload FROM audit_queue q "
    "JOIN audit_entries e ON e.id = q.entry_id ORDER BY q.entry_id LIMIT ?"
)
# On PostgreSQL each entry is read from its own partition. The join's key then holds
# the partition key, but PostgreSQL, costing a join as if every partition were read,
# hashed the whole online log for it (as it did for the join by id alone): only a nested
# loop over the queue prunes at run time, with each row's time, to one partition. A
# LATERAL subquery with a LIMIT is not flattened into a join, so a nested loop is the
# only plan there is, whatever the statistics (one row at most either way: the first
# arm's key is the primary key, the second's id comes from a sequence). A row queued by
# code before migration 0017 has no time (NULL, which prunes the first arm to nothing):
# the second arm reads it by id, in every partition, and its LIMIT keeps its filter one
# check per row, not one per partition. The second arm runs for any row the first
# does not find, not only NULL ones: the outer LIMIT 1 stops the UNION ALL after the
# first arm's row, and a queue row whose time is not its entry's (written by hand, or a
# bug) is then still found by id, where it was passed over for ever (review 26).
_QUEUED_PG: Final = (
    "SELECT q.entry_id, e.payload FROM audit_queue q CROSS JOIN LATERAL ("
    "SELECT payload FROM (SELECT payload FROM audit_entries e "
    "WHERE e.id = q.entry_id AND e.created_at = q.created_at LIMIT 1) dated "
    "UNION ALL SELECT payload FROM (SELECT payload FROM audit_entries e "
    "WHERE e.id = q.entry_id LIMIT 1) undated LIMIT 1"
    ") e ORDER BY q.entry_id LIMIT %s"
)


def queued_entries(connection: Connection, limit: int) -> list[tuple[int, str]]:
    """The first `limit` queued entries as (entry id, payload), in entry id order: the
    sequencer's read, on the transaction's cursor (a SQLAlchemy row per entry cost more
    than the read itself for a batch's 1,000 entries). A queued id whose entry is not
    found is passed over, as an inner join does."""
    sql = _QUEUED_PG if connection.dialect.name == "postgresql" else _QUEUED
    with _cursor(connection) as run:
        rows = run(sql, (limit,), fetch=True)
    return [(int(entry_id), str(payload)) for entry_id, payload in rows]


def delete_queued(connection: Connection, entry_ids: list[int]) -> None:
    """Delete the queue rows of `entry_ids` (integrated entries) on the transaction's
    cursor: one array parameter on PostgreSQL, an ``IN`` list per 30,000 on SQLite.
    SQLAlchemy's ``IN`` of 1,000 literals built and compiled a bound parameter per id on
    every call."""
    if not entry_ids:
        return
    with _cursor(connection) as run:
        if connection.dialect.name == "postgresql":
            run("DELETE FROM audit_queue WHERE entry_id = ANY(%b::int8[])", (entry_ids,))
            return
        for start in range(0, len(entry_ids), _MAX_PARAMETERS):
            chunk = tuple(entry_ids[start : start + _MAX_PARAMETERS])
            marks = ", ".join("?" * len(chunk))
            run(f"DELETE FROM audit_queue WHERE entry_id IN ({marks})", chunk)  # noqa: S608


@contextmanager
def _cursor(connection: Connection) -> Iterator[Any]:
    """A function that runs one statement on the transaction's own cursor (returning
    its rows when asked to fetch), raising a driver error as SQLAlchemy's class for it,
    as an execute would."""
    dialect = connection.dialect
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]

    def run(sql: str, params: tuple[object, ...], *, fetch: bool = False) -> list[Any]:
        try:
            cursor.execute(sql, params)
            return list(cursor.fetchall()) if fetch else []
        except dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(
                sql, params, exc, dialect.loaded_dbapi.Error, dialect=dialect
            ) from None

    try:
        yield run
    finally:
        cursor.close()
