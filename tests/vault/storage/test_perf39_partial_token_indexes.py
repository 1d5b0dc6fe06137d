"""Migration 0025 (session 39, issue 21): three of the token rows' indexes hold only the
rows they can serve, and still serve every read and hold every key unique.

A token without an expiry or an idempotency key (most rows: every batch item) had an
entry of a NULL key in each of them, index upkeep and WAL for every card written that
no read used and no uniqueness needed (NULLs never conflict)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from tests.vault.storage.test_migrations import _downgrade, _upgrade
from vault.storage.database import create_database_engine, migrate

_NEW = {"ix_tokens_expiring", "ix_tokens_live_expiring", "uq_tokens_domain_idempotency_keyed"}
_OLD = {"ix_tokens_expires_at", "ix_tokens_live_expires_at", "uq_tokens_domain_idempotency"}
_ROW = (
    "INSERT INTO tokens (id, token, format, convergent, metadata, owner, domain,"
    " idempotency_key, created_at, expires_at) VALUES (:id, :id, 'uuid', false, '{}',"
    " :owner, 'd', :key, '2026-12-06 00:00:00', :expires)"
)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_database_engine(database_url)
    yield engine
    engine.dispose()


def _indexes(engine: Engine) -> dict[str, str]:
    """Each index of `tokens` by name, with its predicate as the database keeps it."""
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            rows = connection.execute(
                text(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index'"
                    " AND tbl_name = 'tokens'"
                )
            )
        else:
            rows = connection.execute(
                text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'tokens'")
            )
        return {str(name): str(sql or "") for name, sql in rows}


def test_the_three_indexes_are_partial_on_their_keys_and_the_old_ones_gone(engine: Engine) -> None:
    migrate(engine)
    built = _indexes(engine)
    assert set(built) >= _NEW, built
    assert not _OLD & set(built), built
    assert re.search(r"WHERE \(?expires_at IS NOT NULL\)?$", built["ix_tokens_expiring"])
    live = built["ix_tokens_live_expiring"]
    assert "expires_at IS NOT NULL" in live, live
    assert "deleted_at IS NULL" in live, live
    assert "idempotency_key IS NOT NULL" in built["uq_tokens_domain_idempotency_keyed"]


def test_a_key_stays_unique_per_domain_and_rows_without_one_do_not_meet(engine: Engine) -> None:
    """The partial unique index refuses what the full one refused: a second row with the
    same key in the same domain (under another owner, so the owner's own constraint
    is not what refuses it); rows without a key were never refused and are not now."""
    migrate(engine)
    with engine.begin() as connection:
        for n in range(3):
            connection.execute(
                text(_ROW), {"id": f"none-{n}", "owner": "o", "key": None, "expires": None}
            )
        connection.execute(text(_ROW), {"id": "k-1", "owner": "o", "key": "k", "expires": None})
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(text(_ROW), {"id": "k-2", "owner": "p", "key": "k", "expires": None})
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM tokens")).scalar() == 4


def test_downgrade_puts_the_full_indexes_back(engine: Engine) -> None:
    migrate(engine)
    _downgrade(engine, "0024")
    built = _indexes(engine)
    assert set(built) >= _OLD, built
    assert not _NEW & set(built), built
    assert "WHERE" not in built["uq_tokens_domain_idempotency"].upper()
    _upgrade(engine, "0025")
    assert not _OLD & set(_indexes(engine))


def test_the_indexes_built_ahead_as_the_operations_guide_says_are_kept(pg_database: str) -> None:
    """docs/operations.md tells operators of a large database to build 0025's indexes
    concurrently before migrating; the migration must then keep those, valid and alone,
    and drop the old ones."""
    engine = create_database_engine(pg_database)
    try:
        _upgrade(engine, "0024")
        guide = (Path(__file__).resolve().parents[3] / "docs" / "operations.md").read_text()
        match = re.search(r"<!-- partial-token-indexes -->\s*```sql\n(.*?)```", guide, re.DOTALL)
        assert match, "docs/operations.md lost its partial-token-indexes SQL block"
        dsn = pg_database.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(dsn, autocommit=True) as connection:
            for statement in filter(str.strip, match.group(1).split(";")):  # one at a time
                connection.execute(statement.encode())
        migrate(engine)
        with psycopg.connect(dsn) as connection:
            rows = connection.execute(
                "SELECT c.relname, i.indisvalid FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'tokens'::regclass"
            ).fetchall()
        columns = {c["name"] for c in inspect(engine).get_columns("tokens")}
    finally:
        engine.dispose()
    valid = {str(name): bool(ok) for name, ok in rows}
    assert all(valid[name] for name in _NEW), valid
    assert not _OLD & set(valid), valid
    assert "expires_at" in columns
