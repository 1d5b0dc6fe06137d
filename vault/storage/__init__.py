"""IN PCI SCOPE, holds card data (encrypted): the token store on SQLite or PostgreSQL."""

# The public modules of this package (its rooms); a module whose name starts with
# an underscore is internal. tests/test_exported_members.py pins this list.
__all__ = [
    "database",
    "groupcommit",
    "rawsql",
    "schema",
    "schema_version",
]
