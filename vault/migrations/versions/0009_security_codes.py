"""Card security codes held once: the codes, their hourly HSM key epochs, their counts.

Revision ID: 0009
Revises: 0008

Additive: code at 0008 never touches the new tables, so it may keep running beside it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from vault.storage.schema import security_code_counts, security_code_epochs, security_codes

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None
min_code_revision = "0008"

_TABLES = (security_code_epochs, security_codes, security_code_counts)


def upgrade() -> None:
    bind = op.get_bind()
    existing = set(sa.inspect(bind).get_table_names())
    for table in _TABLES:
        if table.name not in existing:
            table.create(bind)
    if bind.dialect.name == "postgresql":
        op.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON security_codes TO cofre_app")
        op.execute("GRANT SELECT, INSERT, UPDATE ON security_code_epochs TO cofre_app")
        op.execute("GRANT SELECT, INSERT, UPDATE ON security_code_counts TO cofre_app")


def downgrade() -> None:
    for table in reversed(_TABLES):
        op.drop_table(table.name)
