"""Schema versions: migrating under a lock, and refusing a schema this code does not know.

IN PCI SCOPE. Only `cofre db migrate` (the owner role, e.g. a Kubernetes Job before a
rollout) and `cofre dev` change the schema; `cofre serve` and every other command only
check it, so the vault can run as the least-privileged ``cofre_app`` role.

Concurrent migrations are safe: on PostgreSQL the whole upgrade runs in one transaction
that first takes a transaction-scoped advisory lock, so a second runner waits, then
finds the schema already at head and does nothing. SQLite transactions already begin
with the write lock (``BEGIN IMMEDIATE``).

Upgrades with old and new vault versions side by side: each revision may declare
``min_code_revision``, the oldest code head that can use the schema it leaves (an
additive revision names its predecessor; without the attribute only code that knows the
revision may use it). `migrate` records that in ``cofre_schema``, and `check_schema`
lets code whose head is at or after it run against the newer schema it does not know.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from cofre.dberrors import db_error_name
from vault.errors import SchemaMismatch, SchemaNotCreated, StorageUnavailable

MIGRATIONS: Final = Path(__file__).resolve().parent.parent / "migrations"
# Any constant unique to Cofre and distinct from the audit sequencer's key ("Cofre").
MIGRATION_LOCK_KEY: Final = 0x436F6672654D  # "CofreM"
SCHEMA_TABLE: Final = "cofre_schema"


@dataclass(frozen=True)
class SchemaStatus:
    """Where the database is (`current`), what this code knows as newest (`head`), and
    whether a newer schema was accepted because it declares this code compatible."""

    current: str | None
    head: str
    newer_but_compatible: bool = False


def _config(script_location: Path | None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location or MIGRATIONS))
    return config


def code_head(script_location: Path | None = None) -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(_config(script_location)).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise SchemaMismatch("no schema revisions are installed")
    return head


def migrate(engine: Engine, *, script_location: Path | None = None) -> SchemaStatus:
    """Bring the schema to the newest revision (idempotent, safe to run concurrently)
    and return where it was before. A schema already at head is left untouched (no DDL,
    so the least-privileged role may run this too); a newer schema is left as it is when
    it declares this code compatible.

    Raises `SchemaMismatch` for a newer schema that does not; `StorageUnavailable` when
    the database cannot be reached or refuses the DDL (the message names the driver's
    error class, never the URL).
    """
    config = _config(script_location)
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head() or ""
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            before, min_code = _read_versions(connection)
            if before == head and min_code is not None:
                return SchemaStatus(before, head)
            if before is not None and before not in _known(script):
                return _judge_newer(script, before, min_code)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            _record_compatibility(connection, script, head)
    except SQLAlchemyError as exc:
        raise StorageUnavailable(f"the schema migration failed: {db_error_name(exc)}") from None
    return SchemaStatus(current=before, head=head)


def _read_versions(connection: Connection) -> tuple[str | None, str | None]:
    """The database's revision, and the oldest code revision it declares compatible
    (None when not recorded for that revision)."""
    current = MigrationContext.configure(connection).get_current_revision()
    if current is None or not inspect(connection).has_table(SCHEMA_TABLE):
        return current, None
    row = connection.execute(text("SELECT revision, min_code_revision FROM cofre_schema")).first()
    if row is None or row[0] != current:
        return current, None
    return current, str(row[1])


def _holds_cofre_tables(connection: Connection) -> bool:
    """Whether the database holds the schema version table or the audit log's, in any
    schema: PostgreSQL's catalogue lists every table to every role, where a table in a
    schema the role may not use looks absent to `_read_versions`. A fresh database
    holds neither (session 42: "not created yet" is the database's answer, not a
    reading of an error message)."""
    if connection.dialect.name == "postgresql":
        found = connection.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
                " ON n.oid = c.relnamespace WHERE c.relname IN ('alembic_version', 'audit_entries')"
                " AND n.nspname NOT IN ('pg_catalog', 'information_schema'))"
            )
        ).scalar()
        return bool(found)
    return bool({"alembic_version", "audit_entries"} & set(inspect(connection).get_table_names()))


def _known(script: ScriptDirectory) -> set[str]:
    return {revision.revision for revision in script.walk_revisions()}


def _judge_newer(script: ScriptDirectory, current: str, min_code: str | None) -> SchemaStatus:
    head = script.get_current_head() or ""
    ancestry = {revision.revision for revision in script.iterate_revisions(head, "base")}
    if min_code is not None and min_code in ancestry:
        return SchemaStatus(current, head, newer_but_compatible=True)
    raise SchemaMismatch(
        f"the database schema is at revision {current}, which this vault (newest known "
        f"revision {head}) does not know and which does not declare it compatible: "
        "upgrade the vault"
    )


def _record_compatibility(connection: Connection, script: ScriptDirectory, head: str) -> None:
    module = getattr(script.get_revision(head), "module", None)
    min_code = str(getattr(module, "min_code_revision", head))
    if not inspect(connection).has_table(SCHEMA_TABLE):
        connection.execute(
            text(
                "CREATE TABLE cofre_schema (id INTEGER PRIMARY KEY CHECK (id = 1), "
                "revision TEXT NOT NULL, min_code_revision TEXT NOT NULL)"
            )
        )
    connection.execute(text("DELETE FROM cofre_schema"))
    connection.execute(
        text("INSERT INTO cofre_schema VALUES (1, :revision, :min_code)"),
        {"revision": head, "min_code": min_code},
    )
    if connection.dialect.name == "postgresql":
        # The vault reads both to check the schema; it never writes them.
        connection.execute(text("GRANT SELECT ON alembic_version, cofre_schema TO cofre_app"))


def check_schema(engine: Engine, *, script_location: Path | None = None) -> SchemaStatus:
    """Return the schema status when this code may use the database as it is.

    Raises `SchemaNotCreated` (a `SchemaMismatch`) when the database holds no Cofre
    schema at all, `SchemaMismatch` for an older one (run `cofre db migrate`), a newer
    one that does not declare this code compatible, or Cofre's tables without a schema
    version this role can read; `StorageUnavailable` when it cannot be read.
    """
    script = ScriptDirectory.from_config(_config(script_location))
    head = script.get_current_head() or ""
    try:
        with engine.connect() as connection:
            current, min_code = _read_versions(connection)
            created = current is not None or _holds_cofre_tables(connection)
    except SQLAlchemyError as exc:
        raise StorageUnavailable(f"cannot read the schema version: {db_error_name(exc)}") from None
    if current == head:
        return SchemaStatus(current, head)
    if not created:
        raise SchemaNotCreated(
            "the database has no Cofre schema: run `cofre db migrate` as the owner role"
        )
    if current is None:
        raise SchemaMismatch(
            "the database holds Cofre's tables but no schema version this role can read: "
            "check the role's privileges (docs/operations.md)"
        )
    if current in _known(script):
        raise SchemaMismatch(
            f"the database schema is at revision {current} and this vault needs {head}: "
            "run `cofre db migrate` as the owner role"
        )
    return _judge_newer(script, current, min_code)
