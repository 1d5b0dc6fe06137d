"""A partial index of the key registry's records in the audit log.

Revision ID: 0014
Revises: 0013

Additive: ``ix_audit_entries_key_register``, on ``audit_entries (id)`` for the rows whose
payload starts ``{"action":"key.register",``. The key registry reads those records once
a second per worker (`vault.key_registry`, on the tokenize path) and the cryptoperiod
monitor once a minute; without the index each read scanned the whole log, so their cost
grew with it (26 ms a read at 200,000 entries on PostgreSQL, issue 21). The predicate is
`vault.key_registry.REGISTER_RECORDS` word for word: both databases use a partial index
only for a query that carries its predicate. On PostgreSQL the index is made on the
partitioned table, and so on every partition, present and future. Code at 0013 reads the
same rows with a LIKE of a bound prefix, which still finds them (by a scan).
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None
min_code_revision = "0013"

_NAME = "ix_audit_entries_key_register"
# Frozen here: a migration does not follow later code.
_PREDICATE = """payload LIKE '{"action":"key.register",%'"""


def upgrade() -> None:
    op.execute(f"CREATE INDEX IF NOT EXISTS {_NAME} ON audit_entries (id) WHERE {_PREDICATE}")


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {_NAME}")
