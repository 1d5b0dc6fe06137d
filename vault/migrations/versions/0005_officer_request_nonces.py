"""Officer MFA: the nonces of accepted request signatures (replay protection).

Revision ID: 0005
Revises: 0004

Additive: code at 0004 never touches the new table, so it may keep running beside it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from vault.storage.schema import officer_request_nonces

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None
min_code_revision = "0004"


def upgrade() -> None:
    bind = op.get_bind()
    if officer_request_nonces.name not in sa.inspect(bind).get_table_names():
        officer_request_nonces.create(bind)
    if bind.dialect.name == "postgresql":
        op.execute("GRANT SELECT, INSERT, DELETE ON officer_request_nonces TO cofre_app")


def downgrade() -> None:
    op.drop_table("officer_request_nonces")
