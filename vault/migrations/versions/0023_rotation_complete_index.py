"""A partial index of the key ceremonies' completion records in the audit log.

Revision ID: 0023
Revises: 0022
Additive: ``ix_audit_entries_rotation_complete``, on ``audit_entries (id)`` for the rows
whose payload starts ``{"action":"key.rotation.complete",``. The vault refuses a data-key
version a data rotation's completion names retired (session 38: its wrapped bytes put
back from a backup opened every card sealed under it again), and reads those records
at each data-key unwrap and at each pass of the rotation worker; without the index each
read scanned the whole log. The predicate is `vault._retired_keys.COMPLETE_RECORDS` word
for word: both databases use a partial index only for a query that carries its
predicate. On PostgreSQL the index is made on the partitioned table, and so on every
partition, present and future. Code at 0022 does not read these records.
"""

from __future__ import annotations

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None
min_code_revision = "0018"

# Frozen here: a migration does not follow later code.
_INDEXES = {
    "ix_audit_entries_rotation_complete": (
        """payload LIKE '{"action":"key.rotation.complete",%'"""
    ),
}


def upgrade() -> None:
    for name, predicate in _INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON audit_entries (id) WHERE {predicate}")


def downgrade() -> None:
    for name in _INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
