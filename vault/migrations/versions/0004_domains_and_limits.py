"""Token domains, and rate limits, quotas and the oracle guard in the database.

Revision ID: 0004
Revises: 0003

Existing tokens join their creator's domain (the default domain of an identity is the
identity itself). Convergence and idempotency keys become per domain. A database created
by revision 0001 from today's table definitions already has all of this; every step
checks first.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from vault.storage.schema import oracle_watch, rate_state, tokens, usage_counters

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    columns = {c["name"] for c in inspector.get_columns("tokens")}
    indexes = {i["name"] for i in inspector.get_indexes("tokens")}
    if "domain" not in columns:
        op.add_column("tokens", sa.Column("domain", sa.String(255), nullable=True))
        op.execute("UPDATE tokens SET domain = owner")
        if bind.dialect.name == "postgresql":
            op.alter_column("tokens", "domain", nullable=False)
    if "uq_tokens_convergent" in indexes:
        op.drop_index("uq_tokens_convergent", table_name="tokens")
    for index in tokens.indexes:
        if index.name in ("uq_tokens_domain_convergent", "uq_tokens_domain_idempotency") and (
            index.name not in indexes
        ):
            index.create(bind)
    existing = set(inspector.get_table_names())
    for table in (rate_state, usage_counters, oracle_watch):
        if table.name not in existing:
            table.create(bind)
    if bind.dialect.name == "postgresql":
        op.execute(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON rate_state, usage_counters, oracle_watch "
            "TO cofre_app"
        )


def downgrade() -> None:
    raise NotImplementedError("token domains cannot be merged back")
