"""Failed TLS handshakes, logged and counted.

IN PCI SCOPE. asyncio drops a failed server-side handshake silently (an `ssl.SSLError`
is an `OSError`, which its SSL protocol logs only in debug mode), so a client with a
revoked, expired or foreign certificate, or a scanner, would leave no trace. This hooks
the running loop's SSL transport factory (CPython's ``_make_ssl_transport`` and its
``SSLProtocol._on_handshake_complete``, private but stable from 3.11 to 3.13) on the
vault's own loop only, and reports each failure with the peer address and OpenSSL's
reason code; ``tests/api/test_lifecycle.py`` fails loudly if the hook stops firing.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import structlog

from api.observability import Telemetry

_log = structlog.get_logger("cofre.tls")


def observe_handshake_failures(
    loop: asyncio.AbstractEventLoop, telemetry: Telemetry | None
) -> None:
    """Log (``tls handshake failed``) and count (``cofre.tls.handshake_failures`` by
    reason) every failed server-side handshake on `loop`."""
    original = getattr(loop, "_make_ssl_transport", None)
    if original is None:  # pragma: no cover - every CPython selector/proactor loop has it
        _log.warning("cannot observe TLS handshakes on this event loop", loop=type(loop).__name__)
        return
    counter = (
        telemetry.meter.create_counter(
            "cofre.tls.handshake_failures", description="Failed TLS handshakes by reason"
        )
        if telemetry is not None
        else None
    )

    def report(exc: BaseException, peer: Any) -> None:
        reason = getattr(exc, "reason", None) if isinstance(exc, ssl.SSLError) else None
        reason = str(reason or type(exc).__name__)
        address = peer[0] if isinstance(peer, tuple) and peer else None
        _log.warning("tls handshake failed", peer=address, reason=reason)
        if counter is not None:
            counter.add(1, {"reason": reason})

    def make_ssl_transport(*args: Any, **kwargs: Any) -> Any:
        transport = original(*args, **kwargs)
        protocol = getattr(transport, "_ssl_protocol", None)
        if protocol is None or not kwargs.get("server_side"):
            return transport
        peer = (kwargs.get("extra") or {}).get("peername")
        complete = protocol._on_handshake_complete

        def on_handshake_complete(handshake_exc: BaseException | None) -> None:
            if handshake_exc is not None:
                report(handshake_exc, peer)
            complete(handshake_exc)

        protocol._on_handshake_complete = on_handshake_complete
        return transport

    loop._make_ssl_transport = make_ssl_transport  # type: ignore[attr-defined]
