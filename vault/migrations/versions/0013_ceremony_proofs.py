"""The signed request behind each key ceremony proposal and approval (review appr).

Revision ID: 0013
Revises: 0012

Additive: two nullable text columns, the request the vault verified for the proposal
(``key_ceremonies.proposer_proof``) and for each approval (``key_approvals.proof``): its
method, authority, path, query, Content-Digest, body and RFC 9421 signature headers
(`vault.approval_proof`). Approvals are counted only while these verify under the
officers' registered MFA keys and name the ceremony, so a row written straight into the
database does not count. Code at 0012 never touches them; a ceremony it left pending
with NULL proofs is refused once this code counts it (cancel it and propose again).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None
min_code_revision = "0012"

_COLUMNS = (("key_ceremonies", "proposer_proof"), ("key_approvals", "proof"))


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table, column in _COLUMNS:
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            op.add_column(table, sa.Column(column, sa.Text(), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35+): a batch copy of key_ceremonies would drop the
    # table key_approvals' rows reference, which SQLite's foreign keys refuse.
    for table, column in _COLUMNS:
        op.drop_column(table, column)
