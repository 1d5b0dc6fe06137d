"""Database errors, described and translated the same way in every package.

IN PCI SCOPE. SQLAlchemy and driver errors carry the statement and its parameters, which
could hold anything; nothing above a package's edge may see them. Each package that
talks to the database turns them into its own `CofreError` through
`database_errors_as`, naming only the driver's error class (httpx's
`map_httpcore_exceptions` is the model: one translator, used at every edge).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.exc import SQLAlchemyError

from cofre.errors import CofreError


def db_error_name(exc: Exception) -> str:
    """The driver's error class name behind a SQLAlchemy error, for messages: it names
    what failed without echoing SQL parameters (which could hold anything)."""
    original = getattr(exc, "orig", None)
    return type(original if original is not None else exc).__name__


@contextmanager
def database_errors_as(error: Callable[[str], CofreError], what: str) -> Iterator[None]:
    """Raise `error("<what> is unavailable (<driver error>)")` for any SQLAlchemy error
    raised inside, without its chain (the chain would carry the statement); a
    `CofreError` raised inside passes through unchanged. Usable as a decorator."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise error(f"{what} is unavailable ({db_error_name(exc)})") from None
