"""Two indexes: the rotations' unreadable-row records, and capture sessions by owner.

Revision ID: 0024
Revises: 0023
Additive:
- ``ix_audit_entries_rotation_row_unreadable``, on ``audit_entries (id)`` for the rows
  whose payload starts ``{"action":"key.rotation.row_unreadable",``. A data or
  fingerprint rotation names the token rows it cannot read (session 38, rot38:
  `vault._rotation_unreadable`), and reads those records at each status of a running
  rotation (`cofre keys status --watch` polls it) and once per worker and ceremony;
  without the index each read scanned every partition since the ceremony began. The
  predicate is `vault._rotation_unreadable.UNREADABLE_RECORDS` word for word: both
  databases use a partial index only for a query that carries its predicate. On
  PostgreSQL it is made on the partitioned table, so on every partition.
- ``ix_capture_sessions_owner_expires_at``, on ``capture_sessions (owner,
  expires_at)``: each capture session opened counts its identity's open sessions
  (session 38, cap38: `capture_sessions.max_live`); through the ``expires_at`` index
  alone that read every identity's open sessions.
Code at 0023 reads neither through them.
"""

from __future__ import annotations

from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None
min_code_revision = "0018"

# Frozen here: a migration does not follow later code.
_PARTIAL = {
    "ix_audit_entries_rotation_row_unreadable": (
        """payload LIKE '{"action":"key.rotation.row_unreadable",%'"""
    ),
}


def upgrade() -> None:
    for name, predicate in _PARTIAL.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON audit_entries (id) WHERE {predicate}")
    op.create_index(
        "ix_capture_sessions_owner_expires_at",
        "capture_sessions",
        ["owner", "expires_at"],
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index("ix_capture_sessions_owner_expires_at", "capture_sessions", if_exists=True)
    for name in _PARTIAL:
        op.execute(f"DROP INDEX IF EXISTS {name}")
