"""A partial index of the key ceremonies' start records in the audit log.

Revision ID: 0021
Revises: 0020
Additive: ``ix_audit_entries_rotation_start``, on ``audit_entries (id)`` for the rows
whose payload starts ``{"action":"key.rotation.start",``. The approval that completes a
ceremony's quorum reads those records to refuse a ceremony that already started (one a
database writer set back to pending: session 31); without the index that read scanned
the whole log. The predicate is `vault._ceremony_guards.START_RECORDS` word for word:
both databases use a partial index only for a query that carries its predicate. On
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

_NAME = "ix_audit_entries_rotation_start"
# Frozen here: a migration does not follow later code.
_PREDICATE = """payload LIKE '{"action":"key.rotation.start",%'"""


def upgrade() -> None:
    op.execute(f"CREATE INDEX IF NOT EXISTS {_NAME} ON audit_entries (id) WHERE {_PREDICATE}")


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {_NAME}")
