"""Initial schema: tokens, data keys, and the append-only audit log.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

from audit.schema import APPEND_ONLY_TABLES
from vault.storage.schema import metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APP_ROLE = "cofre_app"
INITIAL_TABLES = (
    "audit_entries",
    "audit_queue",
    "audit_leaves",
    "audit_nodes",
    "audit_heads",
    "tokens",
    "data_keys",
)


def upgrade() -> None:
    bind = op.get_bind()
    # The tables as of this revision; later revisions create their own.
    metadata.create_all(bind, tables=[metadata.tables[name] for name in INITIAL_TABLES])
    if bind.dialect.name == "sqlite":
        for table in APPEND_ONLY_TABLES:
            for verb in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
                )
        return
    op.execute(
        """
        CREATE OR REPLACE FUNCTION cofre_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only', TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    for table in APPEND_ONLY_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION cofre_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION cofre_append_only()"
        )
    # The role the vault runs as: it may add to the audit log, never change or remove
    # from it. Operators create login users that are members of it (docs/operations.md).
    op.execute(
        f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                CREATE ROLE {APP_ROLE} NOLOGIN;
            END IF;
        END $$
        """
    )
    for table in APPEND_ONLY_TABLES:
        op.execute(f"REVOKE ALL ON {table} FROM {APP_ROLE}")
        op.execute(f"GRANT SELECT, INSERT ON {table} TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, DELETE ON audit_queue TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON tokens, data_keys TO {APP_ROLE}")
    op.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}")


def downgrade() -> None:
    raise NotImplementedError("the audit log is append-only: there is no downgrade")
