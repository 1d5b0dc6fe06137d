"""Three of the token rows' indexes hold only the rows they can serve.

Revision ID: 0025
Revises: 0024

Each token row had an entry in every one of its nine indexes, NULL keys included: in
``ix_tokens_expires_at`` and ``ix_tokens_live_expires_at`` for a token without an expiry
(most of them), in ``uq_tokens_domain_idempotency`` for a row without an idempotency key
(every batch item, every call without the header). Such an entry serves no read (every
read of ``expires_at`` compares it, ``expires_at <= now``; every read of the key compares
it) and enforces nothing (two NULLs never conflict in a unique index), yet PostgreSQL
inserted and WAL-logged it for every card: ~14 of the ~70 us of PostgreSQL CPU a batch
card cost (issue 21, bench/levers.md, session 39). This revision builds the three as
partial indexes under new names and drops the old ones:

- ``ix_tokens_expiring``: ``tokens (expires_at) WHERE expires_at IS NOT NULL``;
- ``ix_tokens_live_expiring``: ``tokens (expires_at) WHERE expires_at IS NOT NULL AND
  deleted_at IS NULL`` (the purge's read, `vault.operations.delete._EXPIRED_LIVE`);
- ``uq_tokens_domain_idempotency_keyed``: ``UNIQUE tokens (domain, idempotency_key)
  WHERE idempotency_key IS NOT NULL``: the same keys are unique as before.

Both databases use a partial index for a query whose WHERE implies its predicate, and a
comparison of a column implies that it is not NULL. On a large PostgreSQL database build
the three concurrently first (docs/operations.md, "Migration 0025"): the migration finds
the names taken and only drops the old indexes. Code at 0024 (and back to 0018) reads
and writes the same rows through them.
"""

from __future__ import annotations

from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None
min_code_revision = "0018"

# Frozen here: a migration does not follow later code.
_NEW = {
    "ix_tokens_expiring": "INDEX ix_tokens_expiring ON tokens (expires_at)"
    " WHERE expires_at IS NOT NULL",
    "ix_tokens_live_expiring": "INDEX ix_tokens_live_expiring ON tokens (expires_at)"
    " WHERE expires_at IS NOT NULL AND deleted_at IS NULL",
    "uq_tokens_domain_idempotency_keyed": "UNIQUE INDEX uq_tokens_domain_idempotency_keyed"
    " ON tokens (domain, idempotency_key) WHERE idempotency_key IS NOT NULL",
}
_OLD = {
    "ix_tokens_expires_at": "INDEX ix_tokens_expires_at ON tokens (expires_at)",
    "ix_tokens_live_expires_at": "INDEX ix_tokens_live_expires_at ON tokens (expires_at)"
    " WHERE deleted_at IS NULL",
    "uq_tokens_domain_idempotency": "UNIQUE INDEX uq_tokens_domain_idempotency"
    " ON tokens (domain, idempotency_key)",
}


def _swap(build: dict[str, str], drop: dict[str, str]) -> None:
    for definition in build.values():
        kind, rest = definition.split("INDEX ", 1)
        op.execute(f"CREATE {kind}INDEX IF NOT EXISTS {rest}")
    for name in drop:
        op.execute(f"DROP INDEX IF EXISTS {name}")


def upgrade() -> None:
    _swap(_NEW, _OLD)


def downgrade() -> None:
    _swap(_OLD, _NEW)
