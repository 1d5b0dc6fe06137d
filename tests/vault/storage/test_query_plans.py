"""The statements the committer runs on the driver's cursor (`vault.storage.rawsql`) find
their rows through an index, on SQLite and on PostgreSQL.

Issue 7 asks that a tokenize cost no more than 1.2x at 10^6 stored tokens than at 10^4;
that holds only while no statement of the tokenize path scans a table. These statements
are plain SQL strings, outside SQLAlchemy's constructs, so a rewrite (a cast, a function
on the column, a quoted name) could make one stop using its index without any test
noticing: the bench would, hours later. The plan is pinned here instead (no timing).
"""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, Engine

from vault.limits import _CHARGE_SQL, _SEEN_SQL, _TAT_SQL
from vault.operations._statements import _ANY_CONVERGENT, _TAKEN_SQL
from vault.storage.database import create_database_engine, migrate
from vault.storage.rawsql import fetch_all


def _plan(connection: Connection, sql: str, params: list[object], in_list: int) -> str:
    """The plan of `sql`, one line per step. On PostgreSQL sequential scans are priced out
    (an empty test table would otherwise rightly be scanned): an index that can serve the
    statement is then used, and a Seq Scan left in the plan means none can."""
    if connection.dialect.name == "sqlite":
        rows = fetch_all(connection, "EXPLAIN QUERY PLAN " + sql, params, in_list=in_list)
        return "\n".join(str(row[-1]) for row in rows)
    connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
    rows = fetch_all(connection, "EXPLAIN " + sql, params, in_list=in_list)
    return "\n".join(str(row[0]) for row in rows)


def _assert_indexed(plan: str, table: str) -> None:
    """SQLite reads `table` only by "SEARCH table USING [COVERING] INDEX" (never "SCAN
    table"); PostgreSQL only through an index (an Index, Index Only or Bitmap Index Scan;
    never "Seq Scan on table")."""
    assert table in plan, plan
    assert "Seq Scan" not in plan, plan
    for step in plan.splitlines():
        if step.startswith(("SEARCH", "SCAN")) and table in step:
            assert step.startswith(f"SEARCH {table} USING"), plan
            assert "INDEX" in step, plan
    if "SEARCH" not in plan:
        scans = ("Index Scan using", "Index Only Scan using", "Bitmap Index Scan on")
        assert any(scan in plan for scan in scans), plan


@pytest.mark.parametrize("candidates", [1, 64, 500])
def test_the_free_token_check_searches_the_token_index(engine: Engine, candidates: int) -> None:
    tokens = [f"token-{i}" for i in range(candidates)]
    with engine.begin() as connection:
        plan = _plan(connection, _TAKEN_SQL, list(tokens), candidates)
    _assert_indexed(plan, "tokens")


@pytest.mark.parametrize("buckets", [1, 500])
def test_the_oracle_guard_reads_its_buckets_through_the_primary_key(
    engine: Engine, buckets: int
) -> None:
    params: list[object] = ["spiffe://cofre/payments", 20_000]
    params += [bytes([i % 256, i // 256]) * 8 for i in range(buckets)]
    with engine.begin() as connection:
        plan = _plan(connection, _SEEN_SQL, params, buckets)
    _assert_indexed(plan, "oracle_watch")


@pytest.mark.parametrize("fingerprints", [1, 2, 500])
def test_the_convergence_probe_searches_the_fingerprint_index(
    engine: Engine, fingerprints: int
) -> None:
    params: list[object] = ["payments", "pan_bin6_last4"] + [
        bytes([i % 256, i // 256]) * 16 for i in range(fingerprints)
    ]
    with engine.begin() as connection:
        plan = _plan(connection, _ANY_CONVERGENT, params, fingerprints)
    _assert_indexed(plan, "tokens")
    # Every column of the unique convergent index is a search key, not a walk past
    # its earlier columns (the probe once left the format out: every convergent entry
    # of the domain was read at each tokenize on PostgreSQL).
    if "SEARCH" in plan:
        assert "format=?" in plan, plan
        assert "fingerprint" in plan, plan
    else:
        condition = plan.split("Index Cond:")[-1]
        assert all(f"{column} =" in condition for column in ("domain", "format")), plan
        assert "fingerprint" in condition, plan


@pytest.mark.parametrize("sql", [_TAT_SQL, _CHARGE_SQL])
def test_the_rate_limit_reads_and_charges_its_bucket_through_the_primary_key(
    engine: Engine, sql: str
) -> None:
    now = 1_700_000_000.0
    params: list[object] = ["spiffe://cofre/payments"]
    if sql == _CHARGE_SQL:
        params = [now, now, 0.001, "spiffe://cofre/payments", now, now, 0.001, now, 2.0]
    with engine.begin() as connection:
        plan = _plan(connection, sql, params, 0)
    _assert_indexed(plan, "rate_state")


def test_a_prepared_statement_keeps_searching_by_its_values(pg_database: str) -> None:
    """psycopg prepares a statement at its fifth run; PostgreSQL's default plan cache may
    then keep a generic plan costed on the table as it was then, in which the oracle
    guard's bucket was a filter, not a search key: every row of the identity was read at
    every tokenize (issue 21). The vault's connections plan every run with its values."""
    engine = create_database_engine(pg_database)  # PostgreSQL only: SQLite has no such cache
    try:
        migrate(engine)
        sql = (
            'SELECT bucket, item FROM oracle_watch WHERE identity = $1 AND "window" = $2'
            " AND bucket = ANY($3::bytea[])"
        )
        with engine.begin() as connection:
            connection.exec_driver_sql(f"PREPARE seen_probe (text, bigint, bytea[]) AS {sql}")
            plans = [
                "\n".join(
                    str(row[0])
                    for row in connection.exec_driver_sql(
                        "EXPLAIN EXECUTE seen_probe('spiffe://cofre/payments', 20000,"
                        " ARRAY['\\x00112233445566778899aabbccddeeff'::bytea])"
                    )
                )
                for _ in range(8)
            ]
    finally:
        engine.dispose()
    assert all("$" not in plan for plan in plans), plans[-1]  # no generic plan
    assert "bucket = ANY" in plans[-1].split("Index Cond:")[-1], plans[-1]
