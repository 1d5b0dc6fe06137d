"""The statements the committer runs on the driver's cursor (`vault.storage.rawsql`) find
their rows through an index, on SQLite and on PostgreSQL.

Issue 7 asks that a tokenize cost no more than 1.2x at 10^6 stored tokens than at 10^4;
that holds only while no statement of the tokenize path scans a table. These statements
are plain SQL strings, outside SQLAlchemy's constructs, so a rewrite (a cast, a function
on the column, a quoted name) could make one stop using its index without any test
noticing: the bench would, hours later. The plan is pinned here instead (no timing).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, Select, event
from sqlalchemy.dialects import sqlite

from audit._rows import _QUEUED_PG
from audit.publisher import NEWEST_COSIGNED
from vault._ceremony_guards import _proposal_starts, cancels_of, starts_of
from vault._custody_gate import APPROVE_RECORDS, PROPOSE_RECORDS, actions_of
from vault.cryptoperiod import _REGISTERED
from vault.custody import recorded
from vault.key_registry import _RECORDS
from vault.limits import _CHARGE_SQL, _SEEN_SQL, _SEEN_THEN_WATCH_SQL, _TAT_SQL
from vault.operations._idempotency import _FORGET, _RECORDED, _RECORDED_PG
from vault.operations._statements import (
    _ANY_CONVERGENT,
    _ANY_CONVERGENT_PG,
    _BY_IDEMPOTENCY_PG,
    _CONVERGENT_PG,
    _KEYS_ELSEWHERE,
    _TAKEN_PG,
    _TAKEN_SQL,
)
from vault.operations.delete import _EXPIRED_LIVE
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
    table"); PostgreSQL only through an index (an Index, Index Only or Bitmap Index Scan,
    either way along it; never "Seq Scan on table")."""
    assert table in plan, plan
    assert "Seq Scan" not in plan, plan
    for step in plan.splitlines():
        if step.startswith(("SEARCH", "SCAN")) and table in step:
            assert step.startswith(f"SEARCH {table} USING"), plan
            assert "INDEX" in step, plan
    if "SEARCH" not in plan:
        scans = ("Index Scan", "Index Only Scan", "Bitmap Index Scan on")  # or Backward
        assert any(scan in plan for scan in scans), plan


@pytest.mark.parametrize("candidates", [1, 64, 500])
def test_the_free_token_check_searches_the_token_index(engine: Engine, candidates: int) -> None:
    tokens = [f"token-{i}" for i in range(candidates)]
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            plan = _plan(connection, _TAKEN_PG, [tokens], 0)
        else:
            plan = _plan(connection, _TAKEN_SQL, list(tokens), candidates)
    _assert_indexed(plan, "tokens")


@pytest.mark.parametrize("buckets", [1, 500])
def test_the_oracle_guard_reads_its_buckets_through_the_primary_key(
    engine: Engine, buckets: int
) -> None:
    identity = "spiffe://cofre/payments"
    sent = [bytes([i % 256, i // 256]) * 8 for i in range(buckets)]
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            params: list[object] = [sent, identity, 20_000, 40_000, identity, 30_000, sent, sent]
            plan = _plan(connection, _SEEN_THEN_WATCH_SQL, params, 0)
        else:
            plan = _plan(connection, _SEEN_SQL, [identity, 20_000, 40_000, *sent], buckets)
    _assert_indexed(plan, "oracle_watch")


@pytest.mark.parametrize("fingerprints", [1, 2, 500])
def test_the_convergence_probe_searches_the_fingerprint_index(
    engine: Engine, fingerprints: int
) -> None:
    fps = [bytes([i % 256, i // 256]) * 16 for i in range(fingerprints)]
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            plan = _plan(connection, _ANY_CONVERGENT_PG, [fps, "payments", "pan_bin6_last4"], 0)
        else:
            plan = _plan(
                connection, _ANY_CONVERGENT, ["payments", "pan_bin6_last4", *fps], len(fps)
            )
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


@pytest.mark.parametrize("keys", [1, 500])
def test_the_keys_used_in_another_domain_are_searched_through_the_owner_key_index(
    engine: Engine, keys: int
) -> None:
    sent = [f"order-{i}" for i in range(keys)]
    params: list[object] = ["spiffe://cofre/payments", *sent, "spiffe://cofre/shop"]
    with engine.begin() as connection:
        plan = _plan(connection, _KEYS_ELSEWHERE, params, keys)
    _assert_indexed(plan, "tokens")


@pytest.mark.parametrize("keys", [1, 500])
def test_the_recorded_keys_are_searched_through_their_two_keys(engine: Engine, keys: int) -> None:
    """The keys sent, recorded in the domain (primary key) or by the caller in another
    domain (the owner's unique index), each with its token row (by id)."""
    sent = [f"order-{i}" for i in range(keys)]
    domain, owner = "spiffe://cofre/shop", "spiffe://cofre/payments"
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            params: list[object] = [sent, domain, owner, domain]
            plan = _plan(connection, f"SELECT * FROM {_RECORDED_PG}", params, 0)
        else:
            params = [*sent, domain, owner]
            plan = _plan(connection, f"SELECT * FROM {_RECORDED}", params, keys)
    assert "Seq Scan" not in plan, plan
    assert "SCAN " not in plan.replace("INDEX SCAN", ""), plan
    if "SEARCH" in plan:  # SQLite names a constraint's index by number: by its columns
        wanted = ["(domain=? AND idempotency_key=?)", "(owner=? AND idempotency_key=?)", "(id=?)"]
    else:
        wanted = ["pk_idempotency_keys", "uq_idempotency_keys_owner", "pk_tokens"]
        assert "Filter" not in plan.replace("Filter: ((domain)::text <>", ""), plan
    assert all(index in plan for index in wanted), plan


def test_the_purge_forgets_idempotency_keys_through_their_age_index(engine: Engine) -> None:
    """Review 27: each batch the purge forgets is found through migration 0019's index on
    ``created_at``, oldest first, and deleted by primary key: never a scan of the young
    records (a lock held as long as the table is large)."""
    sql = _FORGET.text.replace(":cutoff", "?").replace(":batch", "?")
    with engine.begin() as connection:
        # SQLite compares SQLAlchemy's text form; PostgreSQL a timestamp.
        cutoff: object = "2026-01-01 00:00:00.000000"
        if connection.dialect.name == "postgresql":
            cutoff = datetime(2026, 1, 1, tzinfo=UTC)
        plan = _plan(connection, sql, [cutoff, 500], 0)
    assert "ix_idempotency_keys_created_at" in plan, plan
    _assert_indexed(plan, "idempotency_keys")


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


def test_several_values_are_searched_one_by_one_on_a_grown_table(pg_database: str) -> None:
    """A commit group's calls share these statements, so they carry several values at
    once. PostgreSQL then once made the values a Filter on a walk of the index's earlier
    columns whenever the table had grown since its statistics (a new vault's first
    minutes): every row of the identity's window, every convergent entry of the domain,
    was read per call (issue 21). Here the tables are analyzed empty and then grown, with
    sequential scans allowed: each value must still be an index search of its own."""
    engine = create_database_engine(pg_database)  # the planner's statistics: PostgreSQL's
    identity, window = "spiffe://cofre/payments", 20_000
    try:
        migrate(engine)
        with engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE tokens")
            connection.exec_driver_sql("ANALYZE oracle_watch")
            connection.exec_driver_sql(
                'INSERT INTO oracle_watch (identity, bucket, "window", item)'
                " SELECT %(identity)s, sha224(int4send(i))::bytea, %(window)s,"
                " sha256(int4send(i)) FROM generate_series(1, 3000) AS i",
                {"identity": identity, "window": window},
            )
            connection.exec_driver_sql(
                "INSERT INTO tokens (id, token, format, convergent, fingerprint, fp_version,"
                " key_version, nonce, ciphertext, metadata, owner, domain, created_at)"
                " SELECT i::text, 't' || i, 'pan_bin6_last4', true, sha256(int4send(i)), 1, 1,"
                " 'n', 'c', '{}', %(identity)s, %(identity)s, now()"
                " FROM generate_series(1, 3000) AS i",
                {"identity": identity},
            )
            sent = [bytes([i]) * 16 for i in range(7)]
            fps = [bytes([i]) * 32 for i in range(7)]
            statements: list[tuple[str, list[object]]] = [
                (
                    _SEEN_THEN_WATCH_SQL,
                    [sent, identity, window, window, identity, window, sent, sent],
                ),
                (_ANY_CONVERGENT_PG, [fps, identity, "pan_bin6_last4"]),
                (_TAKEN_PG, [[f"x{i}" for i in range(7)]]),
                # The rows of the fingerprints found, and of idempotency keys sent.
                (f"SELECT * FROM {_CONVERGENT_PG}", [fps, identity, "pan_bin6_last4"]),
                (f"SELECT * FROM {_BY_IDEMPOTENCY_PG}", [[f"k{i}" for i in range(7)], identity]),
            ]
            plans = [
                "\n".join(
                    str(row[0])
                    for row in fetch_all(connection, "EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
                )
                for sql, params in statements
            ]
            connection.rollback()  # the watch's insert too
    finally:
        engine.dispose()
    for plan in plans:
        assert "Seq Scan on" not in plan, plan
        assert "loops=7" in plan, plan  # one search per value sent
    # The guard's read and the free-token check have one index that fits. The probe's
    # inner search is a tie, on statistics taken on an empty table, between the
    # domain's convergent index and its idempotency index; PostgreSQL sometimes takes
    # the second and filters the domain's rows (seen in a clean-clone run; left, issue
    # 21's note): only the first two are pinned to no filtering.
    for plan in (plans[0], plans[2]):
        assert "Rows Removed by Filter" not in plan, plan


@pytest.mark.parametrize("query", [_RECORDS, _REGISTERED], ids=["registry", "cryptoperiods"])
def test_the_key_registry_records_are_read_through_their_partial_index(
    engine: Engine, query: Select[tuple[object, ...]]
) -> None:
    """The registry reads its records once a second per worker, on the tokenize path: a
    scan of `audit_entries` there grew with the log (issue 21). Only the partial index
    of migration 0014 can serve the read, and it holds those records alone: reading it
    whole (SQLite's "SCAN ... USING INDEX") is reading them, not the log."""
    with engine.begin() as connection:
        # Compiled for the driver's paramstyle (psycopg's "%%" is its "%").
        sql = str(query.compile(dialect=connection.dialect))
        plan = _plan(connection, sql, [], 0)
        names = {"ix_audit_entries_key_register"}
        if connection.dialect.name == "postgresql":  # each partition's copy of the index
            names |= set(
                connection.exec_driver_sql(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = 'ix_audit_entries_key_register'::regclass"
                ).scalars()
            )
    assert "Seq Scan" not in plan, plan
    reads = [s for s in plan.splitlines() if "SCAN audit_entries" in s or "Index Scan" in s]
    assert reads, plan
    assert all(any(name in step for name in names) for step in reads), plan


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (starts_of("c-0123456789abcdef"), "ix_audit_entries_rotation_start"),
        (_proposal_starts("0123456789abcdef" * 4), "ix_audit_entries_rotation_start"),
        (
            cancels_of("c-0123456789abcdef", "0123456789abcdef" * 4),
            "ix_audit_entries_rotation_cancel",
        ),
    ],
    ids=["by-ceremony", "by-proposal", "cancels"],
)
def test_a_ceremonys_start_and_cancel_records_are_read_through_their_partial_index(
    engine: Engine, query: Select[Any], index: str
) -> None:
    """The approval that completes a ceremony's quorum reads the log's start and cancel
    records to refuse a ceremony, or a signed proposal, that already ran or was
    cancelled (session 31 and its review). Only migration 0021's partial indexes can
    serve it without a scan of the audit log: months of entries on a busy vault, inside
    the approval's transaction."""
    with engine.begin() as connection:
        sql = str(query.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))
        plan = _plan(connection, sql, [], 0)
        names = {index}
        if connection.dialect.name == "postgresql":  # each partition's copy of the index
            names |= set(
                connection.exec_driver_sql(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    f" WHERE i.inhparent = '{index}'::regclass"
                ).scalars()
            )
    assert "Seq Scan" not in plan, plan
    reads = [s for s in plan.splitlines() if "SCAN audit_entries" in s or "Index Scan" in s]
    assert reads, plan
    assert all(any(name in step for name in names) for step in reads), plan


def _partial_index_reads(connection: Connection, plan: str, index: str) -> None:
    """Assert that `plan` reads `audit_entries` through partial index `index` alone
    (on PostgreSQL, each partition's copy of it), never a scan of the log."""
    names = {index}
    if connection.dialect.name == "postgresql":  # by name: none when the index is missing
        names |= set(
            connection.exec_driver_sql(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                f" JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = '{index}'"
            ).scalars()
        )
    assert "Seq Scan" not in plan, plan
    reads = [s for s in plan.splitlines() if "SCAN audit_entries" in s or "Index Scan" in s]
    assert reads, plan
    assert all(any(name in step for name in names) for step in reads), plan


def test_the_custody_gate_reads_the_acknowledgements_through_their_partial_index(
    engine: Engine,
) -> None:
    """The custody gate reads every acknowledgement at each key ceremony proposal and
    approval (`vault.custody.recorded`). With a bound prefix (``startswith``) neither
    database could match it to a partial index, and each read scanned the audit log
    (session 35, at 10^6 entries: 0.3 s on PostgreSQL, 0.5 s on SQLite; 0.4 ms and 0.07 ms
    through the index)
    The statement pinned is the one `recorded` sends, as sent, with its parameters."""
    sent: list[tuple[str, Any]] = []

    def capture(*args: Any) -> None:
        if "FROM audit_entries" in args[2]:  # not the driver's own (BEGIN, PRAGMA...)
            sent.append((args[2], args[3]))  # statement, parameters

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with engine.connect() as connection:
            recorded(connection)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    [(sql, params)] = sent
    with engine.begin() as connection:
        explain = "EXPLAIN QUERY PLAN " if connection.dialect.name == "sqlite" else "EXPLAIN "
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        rows = connection.exec_driver_sql(explain + sql, params).all()
        plan = "\n".join(
            str(row[-1] if connection.dialect.name == "sqlite" else row[0]) for row in rows
        )
        _partial_index_reads(connection, plan, "ix_audit_entries_custody_acknowledge")


@pytest.mark.parametrize(
    ("predicate", "index"),
    [
        (PROPOSE_RECORDS, "ix_audit_entries_rotation_propose"),
        (APPROVE_RECORDS, "ix_audit_entries_rotation_approve"),
    ],
    ids=["proposals", "approvals"],
)
def test_a_ceremonys_actions_are_read_through_their_partial_index(
    engine: Engine, predicate: str, index: str
) -> None:
    """The approval that completes a quorum reads the ceremony's proposal and approvals
    to check each came after its officer's custody acknowledgement (session 35), under
    the ceremony lock: through migration 0022's partial indexes, never a scan."""
    query = actions_of(predicate, "c-0123456789abcdef")
    with engine.begin() as connection:
        sql = str(query.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))
        _partial_index_reads(connection, _plan(connection, sql, [], 0), index)


def test_the_purge_reads_expired_tokens_through_the_live_expiry_index(engine: Engine) -> None:
    """The purge worker runs every few minutes on every node. A purged token keeps its
    row and its expiry (crypto-shredded, `deleted_at` set), so a read through the plain
    expiry index walked every token ever purged before the first one left to purge,
    and all of them when none was: a cost growing for ever. Only the partial index of
    the live tokens alone (migration 0015, with an expiry alone since 0025) may serve
    it; the plain one shows as a search too, so the index is named."""
    # "?" placeholders, as `_plan` takes on both databases; the date only the planner
    # sees, as text (the plan does not depend on it).
    compiled = _EXPIRED_LIVE.compile(dialect=sqlite.dialect())
    values = {"now": "2026-12-04 00:00:00+00", "batch": 500}
    params: list[object] = [values.get(name, 0) for name in compiled.positiontup or ()]
    with engine.begin() as connection:
        plan = _plan(connection, str(compiled), params, 0)
    _assert_indexed(plan, "tokens")
    assert "ix_tokens_live_expiring" in plan, plan
    assert "ix_tokens_expiring" not in plan.replace("ix_tokens_live_expiring", ""), plan


def _plan_on_a_grown_table(
    pg_database: str,
    query: Select[Any],
    values: dict[str, object],
    table: str,
    fill: list[str],
) -> str:
    """The executed plan of `query` with `values` on PostgreSQL, sequential scans
    allowed, after the `fill` statements and ANALYZE of `table`: the planner's
    statistics of a real vault rather than of an empty table."""
    # "?" placeholders in order, as `fetch_all` takes on both databases; the statement's
    # own values (SQLite's LIMIT and OFFSET) as compiled.
    compiled = query.compile(dialect=sqlite.dialect())
    params = [values.get(name, compiled.params.get(name)) for name in compiled.positiontup or ()]
    return _executed_plan(pg_database, str(compiled), params, table, fill)


def _executed_plan(
    pg_database: str, sql: str, params: list[object], table: str, fill: list[str]
) -> str:
    """`_plan_on_a_grown_table` of `sql` ("?" placeholders) with `params`."""
    engine = create_database_engine(pg_database)
    try:
        migrate(engine)
        with engine.begin() as connection:
            for statement in fill:
                connection.exec_driver_sql(statement)
            connection.exec_driver_sql(f"ANALYZE {table}")
            plan = "\n".join(
                str(row[0])
                for row in fetch_all(connection, "EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            )
            connection.rollback()
    finally:
        engine.dispose()
    return plan


def test_the_purge_finds_nothing_to_purge_without_reading_the_purged(pg_database: str) -> None:
    """With the planner's statistics of a real vault (most rows purged, their expiry
    past; the live ones not yet expired) and sequential scans allowed, the purge reads
    the live expiry index alone, never the purged rows: PostgreSQL once read the whole
    table (a Seq Scan, the two conditions taken as independent) or every purged row
    (through the plain expiry index) at each run, to find nothing."""
    plan = _plan_on_a_grown_table(
        pg_database,
        _EXPIRED_LIVE,
        {"now": "2026-12-04 00:00:00+00", "batch": 500},
        "tokens",
        [
            "INSERT INTO tokens (id, token, format, convergent, fp_version, metadata,"
            " owner, domain, created_at, expires_at, deleted_at)"
            " SELECT 'p' || i, 'p' || i, 'pan', false, 1, '{}', 'o', 'd',"
            " timestamptz '2025-06-01', timestamptz '2026-11-30' - i * interval '1 minute',"
            " timestamptz '2026-12-01' FROM generate_series(1, 20000) AS i",
            "INSERT INTO tokens (id, token, format, convergent, fp_version, metadata,"
            " owner, domain, created_at, expires_at)"
            " SELECT 'l' || i, 'l' || i, 'pan', false, 1, '{}', 'o', 'd',"
            " timestamptz '2026-12-01', timestamptz '2027-01-01' + i * interval '1 minute'"
            " FROM generate_series(1, 2000) AS i",
        ],
    )
    assert "Seq Scan" not in plan, plan
    assert "ix_tokens_live_expiring" in plan, plan
    assert "Rows Removed by Filter" not in plan, plan


def test_a_witness_newest_cosignature_is_found_through_its_own_index(engine: Engine) -> None:
    """Every metrics scrape, readiness probe and publisher round reads the newest tree
    size each pinned witness key cosigned. Along the primary key (tree size first) a
    witness that stopped cosigning, or never had, cost a walk of every stored
    cosignature; only migration 0016's index, witness and key first, finds it in one
    probe (the primary key shows as an index read too, so the index is named)."""
    compiled = NEWEST_COSIGNED.compile(dialect=sqlite.dialect())
    values: dict[str, object] = {"witness": "w", "key_id": 1}
    params = [values.get(name, 1) for name in compiled.positiontup or ()]
    with engine.begin() as connection:
        plan = _plan(connection, str(compiled), params, 0)
    _assert_indexed(plan, "audit_cosignatures")
    assert "ix_audit_cosignatures_witness" in plan, plan


def test_a_witness_that_never_cosigned_costs_no_walk_of_the_others(pg_database: str) -> None:
    """With the planner's statistics of a real log (one witness's 20,000 cosignatures)
    and sequential scans allowed, asking after a pinned witness with none reads no row:
    PostgreSQL walked the primary key backwards through all of them."""
    plan = _plan_on_a_grown_table(
        pg_database,
        NEWEST_COSIGNED,
        {"witness": "silent", "key_id": 7},
        "audit_cosignatures",
        [
            "INSERT INTO audit_cosignatures (tree_size, witness, key_id, timestamp, signature)"
            " SELECT i, 'busy', 1, 1764806400 + i, '\\x00' FROM generate_series(1, 20000) AS i"
        ],
    )
    assert "Seq Scan" not in plan, plan
    assert "ix_audit_cosignatures_witness" in plan, plan
    assert "Rows Removed by Filter" not in plan, plan


# An executed scan of a partition of the audit entries, and how many times it ran.
_PARTITION_SCAN = re.compile(r" on (audit_entries_\w+) .*\(actual time=\S+ rows=\d+ loops=(\d+)\)")


def test_the_sequencer_reads_each_queued_entry_from_its_own_partition(pg_database: str) -> None:
    """The sequencer reads its queue's payloads at every run. By id alone, which names
    no partition, PostgreSQL searched every online partition per entry or hashed the
    whole online log: 26-28 ms per 1,000 queued at 18 monthly partitions, growing with
    every month left online. With each entry's time in the queue (migration 0017), and
    the planner's statistics of a real log (twelve months of entries, the queue holding
    some of six of them), each queued entry must be one index search, in its own
    partition alone; the other partitions never run."""
    queued = 6 * 25
    plan = _executed_plan(
        pg_database,
        _QUEUED_PG.replace("%s", "?"),
        [1000],
        "audit_entries, audit_queue",
        [
            "SELECT cofre_audit_ensure_partitions(now() - interval '12 months', 3)",
            "INSERT INTO audit_entries (payload, created_at) SELECT md5(i::text),"
            " now() - interval '12 months' + i * interval '30 minutes'"
            " FROM generate_series(1, 12 * 30 * 24 * 2) AS i",
            # 25 entries from each of the six months from the fourth month back.
            "INSERT INTO audit_queue (entry_id, created_at) SELECT id, created_at FROM ("
            " SELECT id, created_at, row_number() OVER (PARTITION BY"
            " date_trunc('month', created_at) ORDER BY id) AS n FROM audit_entries"
            " WHERE created_at >= date_trunc('month', now() - interval '10 months')"
            " AND created_at < date_trunc('month', now() - interval '4 months')) months"
            " WHERE n <= 25",
        ],
    )
    assert "Hash" not in plan, plan
    scans = [_PARTITION_SCAN.search(step) for step in plan.splitlines()]
    runs = {match.group(1): int(match.group(2)) for match in scans if match is not None}
    assert all("Index Scan" in step for step in plan.splitlines() if _PARTITION_SCAN.search(step))
    # One search per queued entry, in as many partitions as the queue has months.
    assert sum(runs.values()) == queued, plan
    assert len(runs) == 6, plan
    assert set(runs.values()) == {25}, plan
