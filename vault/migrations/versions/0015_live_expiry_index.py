"""A partial index of the live tokens' expiry.

Revision ID: 0015
Revises: 0014

Additive: ``ix_tokens_live_expires_at``, on ``tokens (expires_at)`` for the rows not yet
deleted. The purge worker (`VaultService.purge_expired`, every node, every five minutes
by default) reads expired live tokens with ``expires_at <= now AND deleted_at IS NULL``.
A purged token stays as a row (crypto-shredded: ``deleted_at`` set, ``expires_at``
kept), so through ``ix_tokens_expires_at`` each run walked every token ever purged
before finding one to purge, and a run with nothing to purge walked them all: a cost
growing with the purged tokens for ever. This index holds the live tokens with an expiry
alone. Both databases use a partial index only for a query whose WHERE implies its
predicate; the purge's ``deleted_at IS NULL`` does. Code at 0014 reads the same rows
(through the older index).
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None
min_code_revision = "0014"

_NAME = "ix_tokens_live_expires_at"
# Frozen here: a migration does not follow later code.
_PREDICATE = "deleted_at IS NULL"


def upgrade() -> None:
    op.execute(f"CREATE INDEX IF NOT EXISTS {_NAME} ON tokens (expires_at) WHERE {_PREDICATE}")


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {_NAME}")
