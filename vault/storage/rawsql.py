"""The group committer's hottest statements, on the DBAPI cursor of the transaction.

IN PCI SCOPE. SQLAlchemy Core costs 50-90 us of Python per statement here (its cache
key, the expansion of IN lists, each parameter's and result's processing) where the
driver itself takes 2-3 us (issue 21: statement execution was 20-38% of a worker's GIL
time under load). The oracle guard's statements and the free-token check run here
instead, on the same connection and in the same transaction: plain SQL with ``?``
placeholders (rewritten for the driver's style), parameters the drivers take as they
are (str, int, bytes: nothing that SQLAlchemy stores in a format of its own, such as
datetimes on SQLite). A driver error is raised as SQLAlchemy's exception for it
(through SQLAlchemy's own error handling, so a connection it leaves useless is dropped
from the pool), so callers translate it exactly as before (a unique-key race is still an
`IntegrityError`, which `vault._core` retries).
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from sqlalchemy import Column, Connection, Dialect, LargeBinary, Table


@functools.lru_cache(maxsize=256)
def _native(sql: str, paramstyle: str, in_list: int) -> str:
    """`sql` with its ``(?*)`` (an IN list) given `in_list` placeholders, and every
    ``?`` in the driver's style."""
    if in_list:
        sql = sql.replace("(?*)", "(" + ", ".join("?" * in_list) + ")")
    return sql if paramstyle == "qmark" else sql.replace("?", "%s")


_CURSOR: Final = "cofre_rawsql_cursor"


def _cursor(connection: Connection) -> Any:
    """The driver cursor these statements share on `connection`'s DBAPI connection,
    kept with the pooled connection: making one per statement was ~5% of the committer
    thread's time on psycopg (issue 21). Kept beside the DBAPI connection it belongs to,
    so a reconnected pool entry gets a new one."""
    proxied = connection.connection
    dbapi_connection = proxied.dbapi_connection
    held = proxied.info.get(_CURSOR)
    if held is None or held[0] is not dbapi_connection:
        held = (dbapi_connection, dbapi_connection.cursor())  # type: ignore[union-attr]
        proxied.info[_CURSOR] = held
    return held[1]


def _run(
    connection: Connection, sql: str, params: Any, *, in_list: int, fetch: bool, count: bool = False
) -> Any:
    """Execute on the shared cursor; the rows (`fetch`), the row count (`count`) or None.
    Whether to fetch is the caller's to say: asking the cursor (its ``description``)
    builds a column object per column on psycopg, per statement."""
    dialect = connection.dialect
    statement = _native(sql, dialect.paramstyle, in_list)
    cursor = _cursor(connection)
    try:
        cursor.execute(statement, params)
    except dialect.loaded_dbapi.Error as exc:
        # Through SQLAlchemy's own handling, as its statements' errors go (no cursor: the
        # shared one stays open): the same exception, the engine's `handle_error`
        # listeners, and a connection that error leaves useless (a dead one, SQLite's
        # read-only one: `vault.storage.database`) invalidated with the pool's older
        # ones. Review 39: raised here without it, the connection went back to the pool
        # and failed every operation that drew it.
        connection._handle_dbapi_exception(exc, statement, params, None, None)
    if fetch:
        return cursor.fetchall()
    return cursor.rowcount if count else None


def fetch_all(
    connection: Connection, sql: str, params: Sequence[Any], *, in_list: int = 0
) -> list[tuple[Any, ...]]:
    """The rows of the SELECT `sql` (``?`` placeholders; ``(?*)`` stands for an IN list
    of `in_list` of them, whose values come in order in `params`)."""
    rows: list[tuple[Any, ...]] = _run(connection, sql, tuple(params), in_list=in_list, fetch=True)
    return rows


def execute(connection: Connection, sql: str, params: Sequence[Any], *, in_list: int = 0) -> int:
    """Run the UPDATE or DELETE `sql` (``?`` placeholders, ``(?*)`` as in `fetch_all`);
    the number of rows it changed."""
    changed: int = _run(connection, sql, tuple(params), in_list=in_list, fetch=False, count=True)
    return changed


@functools.lru_cache(maxsize=64)
def _select_plan(
    table: Table, dialect: Dialect
) -> tuple[str, Callable[..., Any], tuple[tuple[int, Callable[[Any], Any]], ...]]:
    """``SELECT <every column> FROM `` for `fetch_records` (the table or its `source`
    follows), the record type of
    its rows, and the result processors of the columns that need one on `dialect` (a
    SQLite datetime is text and a boolean an integer; PostgreSQL's driver returns both
    as Python's)."""
    names = [column.name for column in table.columns]
    quoted = ", ".join(dialect.identifier_preparer.quote(name) for name in names)
    record = collections.namedtuple(f"{table.name}_record", names)  # type: ignore[misc]
    processors = []
    for index, column in enumerate(table.columns):
        processor = column.type._cached_result_processor(dialect, None)
        if processor is not None:
            processors.append((index, processor))
    # Names are the table's own columns; every value is bound.
    return f"SELECT {quoted} FROM ", record, tuple(processors)  # noqa: S608


def fetch_records(
    connection: Connection,
    table: Table,
    where: str,
    params: Sequence[Any],
    *,
    in_list: int = 0,
    source: str | None = None,
) -> list[Any]:
    """The rows of `table` matching `where` (`fetch_all`'s placeholders), every column,
    each as a record read by attribute like SQLAlchemy's rows, with the values
    processed as SQLAlchemy would return them. `source`: a FROM clause to read them
    from instead of the table, whose rows are the table's and named as it (a LATERAL
    subquery aliased with the table's name); its placeholders come first."""
    select_sql, record, processors = _select_plan(table, connection.dialect)
    rows = _run(
        connection,
        f"{select_sql}{source or table.name} WHERE {where}",
        tuple(params),
        in_list=in_list,
        fetch=True,
    )
    records = []
    for row in rows:
        values = list(row)
        for index, processor in processors:
            values[index] = processor(values[index])
        records.append(record(*values))
    return records


# SQLite takes at most 32,766 parameters in a statement.
_MAX_PARAMETERS = 30_000


def insert_rows(
    connection: Connection, into: str, rows: Sequence[Sequence[Any]], *, then: str = ""
) -> None:
    """``INSERT INTO <into> VALUES (...), (...) <then>``: every row in one multi-row
    statement (a few for a very large batch), not one statement per row, which is what
    the drivers' executemany costs on PostgreSQL."""
    if not rows:
        return
    width = len(rows[0])
    per_statement = max(1, _MAX_PARAMETERS // width)
    mark = "(" + ", ".join("?" * width) + ")"
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        # `into` and `then` are this code's constants; every value is bound.
        sql = f"INSERT INTO {into} VALUES {', '.join([mark] * len(chunk))} {then}"  # noqa: S608
        params = tuple(value for row in chunk for value in row)
        _run(connection, sql, params, in_list=0, fetch=False)


@functools.lru_cache(maxsize=64)
def _insert_plan(
    table: Table, names: tuple[str, ...], dialect: Dialect
) -> tuple[str, tuple[tuple[int, Callable[[Any], Any]], ...]]:
    """``table (names)`` for `insert_rows`, and the bind processors of the columns that
    need one on `dialect` (a SQLite datetime is stored in SQLAlchemy's own text format;
    bytes go to both drivers as they are)."""
    columns: list[Column[Any]] = [table.c[name] for name in names]
    quoted = ", ".join(dialect.identifier_preparer.quote(name) for name in names)
    # Names are the table's own columns (looked up above); every value is bound.
    into = f"{table.name} ({quoted})"
    processors = []
    for index, column in enumerate(columns):
        if isinstance(column.type, LargeBinary):
            continue
        processor = column.type._cached_bind_processor(dialect)
        if processor is not None:
            processors.append((index, processor))
    return into, tuple(processors)


@functools.lru_cache(maxsize=64)
def _unnest_sql(table: Table, names: tuple[str, ...], dialect: Dialect) -> str:
    """PostgreSQL: ``INSERT INTO table (names) SELECT * FROM unnest(<one binary array
    parameter per column, cast to the column's type>)``."""
    into, _ = _insert_plan(table, names, dialect)
    arrays = ", ".join(f"%b::{table.c[name].type.compile(dialect=dialect)}[]" for name in names)
    # Names and types are the table's own; every value is bound.
    return f"INSERT INTO {into} SELECT * FROM unnest({arrays})"  # noqa: S608


def insert_many(connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert `rows` (each with the same keys: the columns written; the others take
    their server defaults, and `table` must have no Python-side ones) in one driver
    statement, with the values processed as SQLAlchemy would: on SQLite a multi-row
    ``VALUES`` (`insert_rows`); on PostgreSQL one binary array per column through
    ``unnest`` (psycopg parses a ``VALUES`` list's placeholders and dumps each value in
    Python: ~65-80 ms of the committer's CPU for a batch's 1,000 token rows, issue 21)."""
    if not rows:
        return
    names = tuple(rows[0])
    dialect = connection.dialect
    into, processors = _insert_plan(table, names, dialect)
    params = []
    for row in rows:
        values = [row[name] for name in names]
        for index, processor in processors:
            values[index] = processor(values[index])
        params.append(values)
    if dialect.name == "postgresql":
        columns = tuple(list(column) for column in zip(*params, strict=True))
        _run(connection, _unnest_sql(table, names, dialect), columns, in_list=0, fetch=False)
        return
    insert_rows(connection, into, params)
