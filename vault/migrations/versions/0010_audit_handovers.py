"""Audit signing key rotation: the handover checkpoints signed by the old and new keys.

Revision ID: 0010
Revises: 0009

Additive: code at 0009 never touches the new table, so it may keep running beside it
(until an audit key rotation, which only code at 0010 can carry out). The table is
append-only like the rest of the audit log (triggers; `cofre_app` may only read and
insert).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from audit.schema import audit_handovers

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None
min_code_revision = "0009"

_TABLE = "audit_handovers"


def upgrade() -> None:
    bind = op.get_bind()
    if _TABLE in sa.inspect(bind).get_table_names():
        return
    audit_handovers.create(bind)
    if bind.dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {_TABLE}_no_{verb.lower()} BEFORE {verb} ON {_TABLE} "
                f"BEGIN SELECT RAISE(ABORT, '{_TABLE} is append-only'); END"
            )
        return
    # cofre_append_only() is 0001's trigger function.
    op.execute(
        f"CREATE TRIGGER {_TABLE}_append_only BEFORE UPDATE OR DELETE ON {_TABLE} "
        "FOR EACH ROW EXECUTE FUNCTION cofre_append_only()"
    )
    op.execute(
        f"CREATE TRIGGER {_TABLE}_no_truncate BEFORE TRUNCATE ON {_TABLE} "
        "FOR EACH STATEMENT EXECUTE FUNCTION cofre_append_only()"
    )
    op.execute(f"GRANT SELECT, INSERT ON {_TABLE} TO cofre_app")


def downgrade() -> None:
    op.drop_table(_TABLE)
