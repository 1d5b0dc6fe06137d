"""Failed TLS handshakes, logged and counted.

IN PCI SCOPE. Neither event loop reports a failed server-side handshake (an
``ssl.SSLError`` is an ``OSError``, which their SSL protocols log only in debug mode),
so a client with a revoked, expired or foreign certificate, or a scanner, would leave no
trace. Every TLS listener of the vault accepts its connections itself (`api.accept`)
and hands each failure here with the peer address; this counts it and logs it with
OpenSSL's reason code (the first of each reason per `LOG_EVERY_SECONDS`: a scan is a
count, not a line per connection). ``tests/api/test_lifecycle.py`` fails loudly if nothing fires.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable
from typing import Final

import structlog

from api.observability import Telemetry

_log = structlog.get_logger("cofre.tls")
# One log line per listener and reason per this many seconds; the counter counts every
# failure. Session 35: anyone who reaches a TLS port (no certificate needed) made a log
# line per connection, at the rate of their connections (200 plain-HTTP connections,
# 200 lines): a flood of the log pipeline and of the event loop's time.
LOG_EVERY_SECONDS: Final = 10.0
# Where `observe_handshake_failures` leaves a loop's reporter for its listeners.
_ATTRIBUTE = "_cofre_handshake_failures"


class HandshakeFailures:
    """Log (``tls handshake failed``, the first of each reason per `LOG_EVERY_SECONDS`,
    with ``not_logged``: how many of that reason went unlogged before it) and, with
    `telemetry`, count (``cofre.tls.handshake_failures`` by listener and reason) each
    failed handshake of
    `listener` (``mtls``: services; ``capture``: browsers, where scanners of the public
    internet would drown a revoked service certificate's failures if both were one)."""

    def __init__(
        self,
        telemetry: Telemetry | None,
        listener: str = "mtls",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._listener = listener
        self._clock = clock
        # reason -> (when its last line was written, failures not logged since). The
        # reasons are OpenSSL's and exception class names: a bounded set.
        self._quiet: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._counter = (
            telemetry.meter.create_counter(
                "cofre.tls.handshake_failures", description="Failed TLS handshakes by reason"
            )
            if telemetry is not None
            else None
        )

    def report(self, exc: BaseException, peer: str | None) -> None:
        reason = getattr(exc, "reason", None) if isinstance(exc, ssl.SSLError) else None
        reason = str(reason or type(exc).__name__)
        if self._counter is not None:
            self._counter.add(1, {"listener": self._listener, "reason": reason})
        now = self._clock()
        with self._lock:
            last, held = self._quiet.get(reason, (None, 0))
            if last is not None and now - last < LOG_EVERY_SECONDS:
                self._quiet[reason] = (last, held + 1)
                return
            self._quiet[reason] = (now, 0)
        _log.warning(
            "tls handshake failed",
            listener=self._listener,
            peer=peer,
            reason=reason,
            **({"not_logged": held} if held else {}),
        )


def observe_handshake_failures(
    loop: asyncio.AbstractEventLoop, telemetry: Telemetry | None
) -> None:
    """Have the TLS listeners started on `loop` count their failed handshakes into
    `telemetry` (they log them in any case)."""
    setattr(loop, _ATTRIBUTE, HandshakeFailures(telemetry))


def handshake_failures(loop: asyncio.AbstractEventLoop) -> HandshakeFailures:
    """The reporter of `loop`'s listeners: the one `observe_handshake_failures` left,
    else one that only logs."""
    found = getattr(loop, _ATTRIBUTE, None)
    return found if isinstance(found, HandshakeFailures) else HandshakeFailures(None)
