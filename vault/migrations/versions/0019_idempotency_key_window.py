"""Idempotency key records are forgotten after a window.

Revision ID: 0019
Revises: 0018

Additive: ``ix_idempotency_keys_created_at``, on ``idempotency_keys (created_at)``, and
on PostgreSQL ``DELETE`` on that table for ``cofre_app``. A record now answers for a
window (``COFRE_TOKENS__IDEMPOTENCY_KEY_TTL_HOURS``, 24 h by default), then the purge
worker removes it, oldest first, a batch a transaction, through this index (review 27:
records were never removed, so one card sent with N keys added N rows for ever). Code
at 0018 neither reads the index nor deletes: it answers from a record until the purge
removes it, which only a node at 0019 does (rolling upgrade).
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None
# An index and a grant the older code never needs.
min_code_revision = "0018"

_NAME = "ix_idempotency_keys_created_at"


def upgrade() -> None:
    op.execute(f"CREATE INDEX IF NOT EXISTS {_NAME} ON idempotency_keys (created_at)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("GRANT DELETE ON idempotency_keys TO cofre_app")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("REVOKE DELETE ON idempotency_keys FROM cofre_app")
    op.execute(f"DROP INDEX IF EXISTS {_NAME}")
