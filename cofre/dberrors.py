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

# PostgreSQL refuses a new connection with a FATAL message and no SQLSTATE the driver
# keeps (psycopg raises a bare OperationalError), so a stopped server, an exhausted
# connection limit and a refused password all read "OperationalError" in the log. These
# known causes are named instead, from a fixed list: the message itself is never echoed.
_CONNECTION_FAILURES: tuple[tuple[str, str], ...] = (
    ("too many clients", "too many connections"),
    ("remaining connection slots are reserved", "too many connections"),
    ("too many connections for", "too many connections"),
    ("Connection refused", "connection refused"),
    # A unix socket with no server behind it: the socket file is not there (session
    # 46's drill: a stopped server over a socket read a bare OperationalError).
    ("No such file or directory", "no server socket"),
    ("the database system is starting up", "database starting up"),
    ("the database system is shutting down", "database shutting down"),
    ("the database system is in recovery mode", "database in recovery"),
    ("authentication failed", "authentication failed"),
    ("timeout expired", "connect timeout"),
)


def db_error_name(exc: Exception) -> str:
    """The driver's error class name behind a SQLAlchemy error, for messages, followed
    by the cause when a new connection was refused for a known one (e.g.
    ``OperationalError: too many connections``): it names what failed without echoing
    SQL parameters (which could hold anything)."""
    original = getattr(exc, "orig", None)
    name = type(original if original is not None else exc).__name__
    text = str(original if original is not None else exc)
    # psycopg says "connection is bad" for some refused connections (a unix socket's).
    if text.startswith(("connection failed", "connection is bad")):
        for marker, cause in _CONNECTION_FAILURES:
            if marker in text:
                return f"{name}: {cause}"
    return name


@contextmanager
def database_errors_as(error: Callable[[str], CofreError], what: str) -> Iterator[None]:
    """Raise `error("<what> is unavailable (<driver error>)")` for any SQLAlchemy error
    raised inside, without its chain (the chain would carry the statement); a
    `CofreError` raised inside passes through unchanged. Usable as a decorator."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise error(f"{what} is unavailable ({db_error_name(exc)})") from None
