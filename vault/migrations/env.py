"""Alembic environment: always run with a connection handed in by `vault.storage.database`."""

from __future__ import annotations

from alembic import context

from vault.storage.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
