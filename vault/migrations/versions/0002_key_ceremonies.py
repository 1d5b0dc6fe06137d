"""Key ceremonies under dual control: proposals, approvals, progress.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

from vault.storage.schema import key_approvals, key_ceremonies

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    key_ceremonies.create(bind)
    key_approvals.create(bind)
    if bind.dialect.name == "postgresql":
        op.execute("GRANT SELECT, INSERT, UPDATE ON key_ceremonies TO cofre_app")
        op.execute("GRANT SELECT, INSERT ON key_approvals TO cofre_app")


def downgrade() -> None:
    raise NotImplementedError("key ceremonies are evidence: there is no downgrade")
