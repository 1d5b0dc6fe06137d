"""Each queued audit entry's time, in the queue.

Revision ID: 0017
Revises: 0016

Additive: a nullable ``audit_queue.created_at``, the ``created_at`` of the queued entry.
On PostgreSQL ``audit_entries`` is partitioned by ``created_at`` and its key is ``(id,
created_at)``; the sequencer read each queued entry by id alone, which names no
partition, so PostgreSQL looked in every online partition per entry or hashed the whole
online log (26-28 ms per 1,000 queued entries at 18 monthly partitions, growing with
every month left online). With the time beside the id it reads the entry's partition
alone (`audit._rows.queued_entries`). Adding a nullable column without a default is a
change of the catalog alone on both databases: the queue is not rewritten, and on
PostgreSQL the writers wait only for the brief lock it takes. Code at 0016 queues rows
without the time (NULL), which the sequencer still reads by id alone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None
min_code_revision = "0016"

_TABLE = "audit_queue"
_COLUMN = "created_at"


def upgrade() -> None:
    # 0001 creates the queue from today's metadata: a database made since has the column.
    inspector = sa.inspect(op.get_bind())
    if _COLUMN not in {c["name"] for c in inspector.get_columns(_TABLE)}:
        op.add_column(_TABLE, sa.Column(_COLUMN, sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column(_TABLE, _COLUMN)
