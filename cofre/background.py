"""How a background loop (audit sequencer, token purge, key rotation) is doing.

IN PCI SCOPE. These loops retry on their next tick, so one failure is no event; a loop
that keeps failing is one, and nothing else would show it: the purge worker that cannot
reach the database stops shredding expired tokens (PCI DSS 3.2.1) and a stuck rotation
leaves data under a retiring key, with every request still answered. `LoopHealth` keeps
the last failure for readiness and logs when failing starts, changes and ends: one line
per change, not one per tick.

A failure is described by its class, plus its message for our own errors (written to be
shown; they never carry card data); a database or vendor error's message could hold a
statement's parameters, so only its class is kept (`cofre.dberrors.db_error_name`).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import structlog

from cofre.dberrors import db_error_name
from cofre.errors import CofreError

__all__ = ["LoopHealth", "describe_failure"]

_log = structlog.get_logger("cofre.background")


def describe_failure(exc: BaseException) -> str:
    """What readiness and the log say about `exc`, without anything it might carry."""
    if isinstance(exc, CofreError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, Exception):
        return db_error_name(exc)
    return type(exc).__name__


class LoopHealth:
    """The state of one loop, updated by its thread and read by readiness."""

    def __init__(self, loop: str) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._error: str | None = None
        self._since: datetime | None = None

    @property
    def last_error(self) -> str | None:
        return self._error

    def failed(self, exc: BaseException) -> None:
        """The tick raised `exc`; logged if the loop was not failing, or failed otherwise."""
        error = describe_failure(exc)
        with self._lock:
            if error == self._error:
                return
            if self._error is None:
                self._since = datetime.now(UTC)
            self._error = error
        _log.warning("background loop failing", loop=self._loop, error=error)

    def succeeded(self) -> None:
        """The tick worked; logged if the loop had been failing."""
        with self._lock:
            if self._error is None:
                return
            since, self._error, self._since = self._since, None, None
        # ISO 8601 as readiness gives it: the JSON renderer would write a datetime's repr.
        when = since.isoformat(timespec="seconds") if since is not None else None
        _log.info("background loop recovered", loop=self._loop, failing_since=when)

    def check(self) -> str:
        """ "ok", or since when it fails and why (for a readiness check that informs but
        does not fail: this node still serves, and another tick may succeed)."""
        with self._lock:
            if self._error is None or self._since is None:
                return "ok"
            return f"failing since {self._since.isoformat(timespec='seconds')}: {self._error}"
