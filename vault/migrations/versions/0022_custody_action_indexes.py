"""Partial indexes of the custody acknowledgements and the ceremony actions in the log.

Revision ID: 0022
Revises: 0021

Additive: ``ix_audit_entries_custody_acknowledge``, ``ix_audit_entries_rotation_propose``
and ``ix_audit_entries_rotation_approve``, on ``audit_entries (id)`` for the rows whose
payload starts ``{"action":"key.custody.acknowledge",``, ``{"action":"key.rotation.propose",``
and ``{"action":"key.rotation.approve",``. The custody gate reads every acknowledgement at
each proposal and approval (`vault._custody_gate`), and the approval that completes a
quorum reads the ceremony's proposal and approvals to check each came after its officer's
acknowledgement (session 35); without the indexes each read scanned the whole log. The
predicates are `vault.custody.ACKNOWLEDGE_RECORDS` and `vault._custody_gate`'s
`PROPOSE_RECORDS` and `APPROVE_RECORDS` word for word: both databases use a partial index
only for a query that carries its predicate. On PostgreSQL each index is made on the
partitioned table, and so on every partition, present and future. Code at 0021 reads the
acknowledgements with a LIKE of a bound prefix, which still finds them (by a scan), and
does not read the ceremony actions.
"""

from __future__ import annotations

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None
min_code_revision = "0018"

# Frozen here: a migration does not follow later code.
_INDEXES = {
    "ix_audit_entries_custody_acknowledge": (
        """payload LIKE '{"action":"key.custody.acknowledge",%'"""
    ),
    "ix_audit_entries_rotation_propose": """payload LIKE '{"action":"key.rotation.propose",%'""",
    "ix_audit_entries_rotation_approve": """payload LIKE '{"action":"key.rotation.approve",%'""",
}


def upgrade() -> None:
    for name, predicate in _INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON audit_entries (id) WHERE {predicate}")


def downgrade() -> None:
    for name in _INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
