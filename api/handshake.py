"""Failed TLS handshakes, logged and counted.

IN PCI SCOPE. Neither event loop reports a failed server-side handshake (an
``ssl.SSLError`` is an ``OSError``, which their SSL protocols log only in debug mode),
so a client with a revoked, expired or foreign certificate, or a scanner, would leave no
trace. Every TLS listener of the vault accepts its connections itself (`api.accept`)
and hands each failure here with the peer address; this logs it with OpenSSL's reason
code and counts it. ``tests/api/test_lifecycle.py`` fails loudly if nothing fires.
"""

from __future__ import annotations

import asyncio
import ssl

import structlog

from api.observability import Telemetry

_log = structlog.get_logger("cofre.tls")
# Where `observe_handshake_failures` leaves a loop's reporter for its listeners.
_ATTRIBUTE = "_cofre_handshake_failures"


class HandshakeFailures:
    """Log (``tls handshake failed``) and, with `telemetry`, count
    (``cofre.tls.handshake_failures`` by listener and reason) each failed handshake of
    `listener` (``mtls``: services; ``capture``: browsers, where scanners of the public
    internet would drown a revoked service certificate's failures if both were one)."""

    def __init__(self, telemetry: Telemetry | None, listener: str = "mtls") -> None:
        self._listener = listener
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
        _log.warning("tls handshake failed", listener=self._listener, peer=peer, reason=reason)
        if self._counter is not None:
            self._counter.add(1, {"listener": self._listener, "reason": reason})


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
