"""Database errors, described and translated the same way in every package.

IN PCI SCOPE. SQLAlchemy and driver errors carry the statement and its parameters, which
could hold anything; nothing above a package's edge may see them. Each package that
talks to the database turns them into its own `CofreError` here, naming only the
driver's error class.
"""

from __future__ import annotations


def db_error_name(exc: Exception) -> str:
    """The driver's error class name behind a SQLAlchemy error, for messages: it names
    what failed without echoing SQL parameters (which could hold anything)."""
    original = getattr(exc, "orig", None)
    return type(original if original is not None else exc).__name__
