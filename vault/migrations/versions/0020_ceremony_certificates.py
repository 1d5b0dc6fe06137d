"""The client certificate behind each key ceremony proposal and approval.

Revision ID: 0020
Revises: 0019

Additive: two nullable text columns, the client certificate (PEM, public) the proposal
(``key_ceremonies.proposer_certificate``) and each approval (``key_approvals.certificate``)
came with. An approval is refused while the CRL in force revokes the proposer's or a
counted approver's certificate (`vault._ceremony_guards.revoked_officers`): an officer
whose certificate was revoked keeps no say in a ceremony still pending. Code at 0018
and 0019 never touches them; a NULL certificate (a ceremony from before, an in-process caller)
is not checked.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None
# Code at 0018 (which 0019 already lets run, in a rolling upgrade) inserts ceremony rows
# without these nullable columns and never reads them.
min_code_revision = "0018"

_COLUMNS = (("key_ceremonies", "proposer_certificate"), ("key_approvals", "certificate"))


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table, column in _COLUMNS:
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            op.add_column(table, sa.Column(column, sa.Text(), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN, as 0013's: a batch copy of key_ceremonies would drop the table
    # key_approvals' rows reference, which SQLite's foreign keys refuse.
    for table, column in _COLUMNS:
        op.drop_column(table, column)
