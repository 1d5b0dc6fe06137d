"""A migrated vault database for a test, on whichever store `database_url` names (the
embedded SQLite file or the suite's PostgreSQL).

On PostgreSQL a fresh test database is made again as a copy of a migrated template
(`CREATE DATABASE ... TEMPLATE`), once per server and set of migrations: running the
26 migrations cost ~0.20 s a test against ~0.09 s for the copy, over ~1,400 tests
(session 43). `migrate` still runs on the copy, and finds it current (~14 ms), so what a
test gets is what `migrate` makes.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import psycopg
import pytest
from sqlalchemy import Engine, make_url

from vault.storage.database import create_database_engine, migrate

_MIGRATIONS = Path(__file__).resolve().parents[2] / "vault" / "migrations"
# Set on a test by the `migrated_database` fixture (tests/conftest.py).
MIGRATED_WANTED: Final = pytest.StashKey[bool]()


@contextmanager
def migrated_engine(database_url: str) -> Iterator[Engine]:
    """An engine on `database_url`, migrated to the newest schema; disposed when the
    block ends (the `engine` fixtures of tests/audit, tests/compliance and tests/vault)."""
    if database_url.startswith("postgresql"):
        _copy_of_template(database_url)
    engine = create_database_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def template_name() -> str:
    """The template's name: the migrations' sources hashed, so that a server kept
    between runs (COFRE_TEST_PG_DSN) never hands out a schema older than this tree's."""
    digest = hashlib.sha256()
    for source in sorted(_MIGRATIONS.rglob("*.py")):
        digest.update(source.relative_to(_MIGRATIONS).as_posix().encode() + b"\0")
        digest.update(source.read_bytes())
    return f"cofre_migrated_{digest.hexdigest()[:16]}"


def _admin_dsn(database_url: str) -> tuple[str, str]:
    """(a libpq DSN to the server's ``postgres`` database, the test database's name)."""
    url = make_url(database_url)
    name = url.database
    assert name, database_url
    admin = url.set(drivername="postgresql", database="postgres")
    return admin.render_as_string(hide_password=False), name


def _copy_of_template(database_url: str) -> None:
    """Make the empty database `database_url` names again, as a copy of the migrated
    template (made first if the server has none). A database that already holds a
    table is left as it is: `migrate` brings it up to date, as before."""
    admin, name = _admin_dsn(database_url)
    target = make_url(database_url).set(drivername="postgresql")
    with psycopg.connect(target.render_as_string(hide_password=False)) as conn:
        if conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON "
            "n.oid = c.relnamespace WHERE n.nspname NOT IN "
            "('pg_catalog', 'information_schema', 'pg_toast'))"
        ).fetchone() != (False,):
            return
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}"')
        create_migrated(conn, database_url)


def create_migrated(conn: psycopg.Connection[tuple[object, ...]], database_url: str) -> None:
    """Create the database `database_url` names, through the server's administrative
    connection `conn`, as a copy of the migrated template (made first if the server has
    none)."""
    _, name = _admin_dsn(database_url)
    template = template_name()
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [template]).fetchone() is None:
        _make_template(conn, database_url, template)
    conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')


def _make_template(
    conn: psycopg.Connection[tuple[object, ...]], database_url: str, template: str
) -> None:
    """Migrate a database under a name of its own, then rename it to `template`: a
    concurrent session (a nested pytest on the same server) never copies one half made.
    The loser of a race drops its own."""
    building = f"{template}_{secrets.token_hex(4)}"
    conn.execute(f'CREATE DATABASE "{building}"')
    engine = create_database_engine(
        make_url(database_url).set(database=building).render_as_string(hide_password=False)
    )
    try:
        migrate(engine)
    finally:
        engine.dispose()
    try:
        conn.execute(f'ALTER DATABASE "{building}" RENAME TO "{template}"')
    except psycopg.errors.DuplicateDatabase:
        conn.execute(f'DROP DATABASE "{building}"')
