"""Audit growth: monthly partitions of ``audit_entries`` (PostgreSQL), and the tables
that record archived segments and retired partitions.

Revision ID: 0008
Revises: 0007

On PostgreSQL the existing ``audit_entries`` is copied, row for row with the same ids
and payloads (so every leaf hash and the whole tree stay as they were), into a new table
range-partitioned by ``created_at``: one partition per UTC month from its oldest row to
three months ahead, and a default partition. A partitioned table's primary key must
include the partition key, so it becomes ``(id, created_at)``, and the foreign keys of
``audit_queue`` and ``audit_leaves`` to it go (`cofre audit verify` already finds a leaf
whose entry is gone). The id sequence is kept. SQLite keeps its single table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from audit.partitions import DEFAULT_PARTITION, ENSURE_FUNCTION_SQL, MONTHS_AHEAD
from audit.schema import ARCHIVE_TABLES, audit_archive, audit_retired

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None
# Additive for the code of 0007: it writes and reads the same columns (it cannot verify
# a log whose oldest partitions were retired, which only an operator does).
min_code_revision = "0007"

APP_ROLE = "cofre_app"


def upgrade() -> None:
    bind = op.get_bind()
    existing = set(sa.inspect(bind).get_table_names())
    for table in (audit_archive, audit_retired):
        if table.name not in existing:
            table.create(bind)
    if bind.dialect.name == "sqlite":
        for name in ARCHIVE_TABLES:
            for verb in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER IF NOT EXISTS {name}_no_{verb.lower()} BEFORE {verb} "
                    f"ON {name} BEGIN SELECT RAISE(ABORT, '{name} is append-only'); END"
                )
        return
    for name in ARCHIVE_TABLES:
        _append_only(name)
        op.execute(f"REVOKE ALL ON {name} FROM {APP_ROLE}")
    # `cofre audit archive` may run as the app role; retiring partitions needs the owner.
    op.execute(f"GRANT SELECT, INSERT ON audit_archive TO {APP_ROLE}")
    op.execute(f"GRANT SELECT ON audit_retired TO {APP_ROLE}")
    _partition_entries(bind)


def _append_only(table: str) -> None:
    op.execute(
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION cofre_append_only()"
    )
    op.execute(
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION cofre_append_only()"
    )


def _partition_entries(bind: sa.Connection) -> None:
    kind = bind.execute(
        sa.text("SELECT relkind FROM pg_class WHERE oid = to_regclass('public.audit_entries')")
    ).scalar()
    if kind == "p":
        return
    # Writers wait for the copy instead of writing to the table being replaced.
    op.execute("LOCK TABLE audit_entries, audit_queue, audit_leaves IN ACCESS EXCLUSIVE MODE")
    inspector = sa.inspect(bind)
    for table in ("audit_queue", "audit_leaves"):
        for fk in inspector.get_foreign_keys(table):
            if fk["referred_table"] == "audit_entries":
                op.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{fk["name"]}"')
    sequence = bind.execute(
        sa.text("SELECT pg_get_serial_sequence('audit_entries', 'id')")
    ).scalar()
    if sequence is None:  # pragma: no cover - 0001 always makes a serial id
        raise RuntimeError("audit_entries.id has no sequence")
    op.execute("ALTER TABLE audit_entries RENAME TO audit_entries_unpartitioned")
    op.execute(
        "ALTER TABLE audit_entries_unpartitioned "
        "RENAME CONSTRAINT pk_audit_entries TO pk_audit_entries_unpartitioned"
    )
    op.execute(f"ALTER SEQUENCE {sequence} OWNED BY NONE")
    op.execute(
        f"""
        CREATE TABLE audit_entries (
            id BIGINT NOT NULL DEFAULT nextval('{sequence}'::regclass),
            payload TEXT NOT NULL,
            created_at TIMESTAMP WITH TIME ZONE NOT NULL,
            CONSTRAINT pk_audit_entries PRIMARY KEY (id, created_at)
        ) PARTITION BY RANGE (created_at)
        """
    )
    op.execute(f"ALTER SEQUENCE {sequence} OWNED BY audit_entries.id")
    op.execute(f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF audit_entries DEFAULT")
    op.execute(ENSURE_FUNCTION_SQL)
    bind.execute(
        sa.text(
            "SELECT cofre_audit_ensure_partitions(COALESCE((SELECT min(created_at) FROM "
            "audit_entries_unpartitioned), now()), :ahead)"
        ),
        {"ahead": MONTHS_AHEAD},
    )
    op.execute(
        "INSERT INTO audit_entries (id, payload, created_at) "
        "SELECT id, payload, created_at FROM audit_entries_unpartitioned ORDER BY id"
    )
    op.execute("DROP TABLE audit_entries_unpartitioned")
    _append_only("audit_entries")
    op.execute(
        f"CREATE TRIGGER {DEFAULT_PARTITION}_no_truncate BEFORE TRUNCATE ON "
        f"{DEFAULT_PARTITION} FOR EACH STATEMENT EXECUTE FUNCTION cofre_append_only()"
    )
    op.execute(f"REVOKE ALL ON audit_entries FROM {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT ON audit_entries TO {APP_ROLE}")
    op.execute(f"GRANT USAGE ON SEQUENCE {sequence} TO {APP_ROLE}")
    op.execute(
        "REVOKE ALL ON FUNCTION cofre_audit_ensure_partitions(timestamptz, integer) FROM PUBLIC"
    )
    op.execute(
        "GRANT EXECUTE ON FUNCTION cofre_audit_ensure_partitions(timestamptz, integer) "
        f"TO {APP_ROLE}"
    )


def downgrade() -> None:
    raise NotImplementedError("audit partitions are not merged back into one table")
