"""Run only by tests/test_harness.py in a child pytest: proves PostgreSQL trouble fails
the run instead of skipping it. Not collected by the main suite (no test_ prefix)."""

from __future__ import annotations

import psycopg

from tests.support.postgres import PostgresCluster


def test_uses_postgres(postgres: PostgresCluster) -> None:
    with psycopg.connect(postgres.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_stops_postgres(postgres: PostgresCluster) -> None:
    postgres.stop("immediate")


def test_needs_postgres_after_stop(pg_database: str) -> None:
    assert pg_database
