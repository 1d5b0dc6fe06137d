# Alembic loads the revisions by path; nothing is imported from this package.
__all__: list[str] = []
