"""The witnesses' cosignatures of the audit key's handover checkpoints (review 29 M3).

Revision ID: 0011
Revises: 0010

Additive: code at 0010 never touches the new table, so it may keep running beside it
(its publisher then keeps no handover cosignature, and bundles it exports after a
rotation fail a verifier that requires witnesses). The table is append-only like the
rest of the audit log (triggers; `cofre_app` may only read and insert).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from audit.schema import audit_handover_cosignatures

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None
min_code_revision = "0010"

_TABLE = "audit_handover_cosignatures"


def upgrade() -> None:
    bind = op.get_bind()
    if _TABLE in sa.inspect(bind).get_table_names():
        return
    audit_handover_cosignatures.create(bind)
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
