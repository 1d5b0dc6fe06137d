"""Multi-row inserts of the audit log's own rows (queue, leaves, nodes) on the
transaction's cursor.

IN PCI SCOPE (the audit log's tables; no card data).
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

# SQLite takes at most 32,766 parameters in a statement.
_MAX_PARAMETERS: Final = 30_000


def insert_values(
    connection: Connection, into: str, rows: list[tuple[object, ...]], pg_types: tuple[str, ...]
) -> None:
    """Insert `rows` into `into` (``table (columns)``) in one statement or a few, on the
    transaction's own cursor. The drivers' executemany (SQLAlchemy's, for these tables,
    on PostgreSQL) sends a statement per row, and psycopg parses a long ``VALUES`` list's
    placeholders in Python: on PostgreSQL each column goes as one array (`pg_types`)
    through ``unnest``, on SQLite as a multi-row ``VALUES`` (issue 21: the sequencer was
    12-16% of a worker's GIL samples on PostgreSQL). A driver error is raised as
    SQLAlchemy's, as an execute would. (`vault.storage.rawsql` does the same for the
    vault's tables; this package, below the vault, cannot import it.)"""
    if not rows:
        return
    dialect = connection.dialect
    # `into` and `pg_types` are the callers' constants; every value is bound.
    if dialect.name == "postgresql":
        arrays = ", ".join(f"%s::{kind}[]" for kind in pg_types)
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
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        for sql, params in statements:
            try:
                cursor.execute(sql, params)
            except dialect.loaded_dbapi.Error as exc:
                raise DBAPIError.instance(
                    sql, params, exc, dialect.loaded_dbapi.Error, dialect=dialect
                ) from None
    finally:
        cursor.close()
