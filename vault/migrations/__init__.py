"""Alembic migrations: one history for SQLite and PostgreSQL (vault and audit tables)."""
