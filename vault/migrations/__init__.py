"""Alembic migrations: one history for SQLite and PostgreSQL (vault and audit tables)."""

# Alembic runs env.py and loads the revisions by path; nothing is imported from this
# package (a star import would run env.py outside Alembic).
__all__: list[str] = []
