"""Partial indexes of the key ceremonies' start and cancel records in the audit log.

Revision ID: 0021
Revises: 0020
Additive: ``ix_audit_entries_rotation_start`` and ``ix_audit_entries_rotation_cancel``,
on ``audit_entries (id)`` for the rows whose payload starts
``{"action":"key.rotation.start",`` and ``{"action":"key.rotation.cancel",``. The
approval that completes a ceremony's quorum reads those records to refuse a ceremony
that already started or was cancelled (one a database writer set back to pending:
session 31); without the indexes that read scanned the whole log. The predicates are
`vault._ceremony_guards.START_RECORDS` and `CANCEL_RECORDS` word for word: both
databases use a partial index only for a query that carries its predicate. On
PostgreSQL the index is made on the partitioned table, and so on every partition,
present and future. Code at 0020 does not read these records.
"""

from __future__ import annotations

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None
min_code_revision = "0018"

# Frozen here: a migration does not follow later code.
_INDEXES = {
    "ix_audit_entries_rotation_start": """payload LIKE '{"action":"key.rotation.start",%'""",
    "ix_audit_entries_rotation_cancel": """payload LIKE '{"action":"key.rotation.cancel",%'""",
}


def upgrade() -> None:
    for name, predicate in _INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON audit_entries (id) WHERE {predicate}")


def downgrade() -> None:
    for name in _INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
