"""A migrated vault database for a test, on whichever store `database_url` names (the
embedded SQLite file or the suite's PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine

from vault.storage.database import create_database_engine, migrate


@contextmanager
def migrated_engine(database_url: str) -> Iterator[Engine]:
    """An engine on `database_url`, migrated to the newest schema; disposed when the
    block ends (the `engine` fixtures of tests/audit, tests/compliance and tests/vault)."""
    engine = create_database_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()
