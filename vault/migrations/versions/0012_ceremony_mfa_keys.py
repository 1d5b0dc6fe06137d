"""The MFA key behind each key ceremony proposal and approval (the ceremony review).

Revision ID: 0012
Revises: 0011

Additive: two nullable columns, the RFC 7638 thumbprint of the officer's token key that
signed the proposal (``key_ceremonies.proposer_keyid``) and each approval
(``key_approvals.keyid``). An action counts only while that key is still the officer's
registered key: one whose token was reported lost and replaced in the policy loses its
say. Code at 0011 never touches them (its rows keep NULL, which counts as before).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None
min_code_revision = "0011"

_COLUMNS = (("key_ceremonies", "proposer_keyid"), ("key_approvals", "keyid"))


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table, column in _COLUMNS:
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            op.add_column(table, sa.Column(column, sa.String(64), nullable=True))


def downgrade() -> None:
    for table, column in _COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
