"""A table of idempotency keys and the token each answers.

Revision ID: 0018
Revises: 0017

Additive: one new table, ``idempotency_keys`` (`vault.storage.schema`): the domain, the
key, the identity that sent it, the token it answers and when (review tok, F2: a key
first answered by convergence was recorded nowhere, so another card could take it). No
card data. Nothing is copied into it: the keys on token rows stay where they are and are
read there as before, so code at 0017, which reads and writes those alone, runs against
it unchanged (rolling upgrade); a key such code answers by convergence is left
unrecorded, as it always was, until every node runs the new code.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None
# An added table the older code never reads.
min_code_revision = "0017"

_TABLE = "idempotency_keys"


def upgrade() -> None:
    bind = op.get_bind()
    if _TABLE not in set(sa.inspect(bind).get_table_names()):
        # Frozen here: a migration does not follow later code.
        op.create_table(
            _TABLE,
            sa.Column("domain", sa.String(255), nullable=False),
            sa.Column("idempotency_key", sa.String(128), nullable=False),
            sa.Column("owner", sa.String(255), nullable=False),
            sa.Column("token_id", sa.String(36), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            # The names `vault.storage.schema`'s naming convention gives them.
            sa.PrimaryKeyConstraint("domain", "idempotency_key", name="pk_idempotency_keys"),
            sa.ForeignKeyConstraint(
                ["token_id"], ["tokens.id"], name="fk_idempotency_keys_token_id_tokens"
            ),
            sa.UniqueConstraint("owner", "idempotency_key", name="uq_idempotency_keys_owner"),
        )
    if bind.dialect.name == "postgresql":
        # Kept like the keys on token rows: read and added, never changed or removed.
        op.execute(f"GRANT SELECT, INSERT ON {_TABLE} TO cofre_app")


def downgrade() -> None:
    op.drop_table(_TABLE)
