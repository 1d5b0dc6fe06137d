"""Hosted card capture sessions.

Revision ID: 0006
Revises: 0005

One new table, `capture_sessions` (vault/capture.py): no card data, only the SHA-256 of
each session's client secret. Additive: code at 0005 runs against it unchanged.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from vault.storage.schema import capture_sessions

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None
# An added table the older code never reads.
min_code_revision = "0005"


def upgrade() -> None:
    bind = op.get_bind()
    if capture_sessions.name not in set(sa.inspect(bind).get_table_names()):
        capture_sessions.create(bind)
    if bind.dialect.name == "postgresql":
        # Expired sessions are deleted by the purge worker.
        op.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON capture_sessions TO cofre_app")


def downgrade() -> None:
    op.drop_table("capture_sessions")
