"""The per-connection half of `api.connections`: a connection's identity, the cap on
the connections one identity (or, without certificates, one client address) holds,
and the read deadline armed for its headers and body (`ConnectionLimits`).

IN PCI SCOPE (moved out of `api.connections`, whose module text says why).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from api.errors import IdentityMissing
from api.tls import certificate_summary, identity_from_pem, tls_extension
from cofre.origins import address_key

__all__ = ["ConnectionLimits"]

_log = structlog.get_logger("cofre.api.connections")


class ConnectionLimits:
    """The per-identity cap and the read deadline, for either protocol class (the
    protocol passes itself: uvicorn's ``connections``, ``loop``, ``transport`` and
    ``client``)."""

    def __init__(self, protocol: Any, limits: type[Any]) -> None:
        self.protocol = protocol
        self.limits = limits
        self.identity: str | None = None
        self.key: str | None = None  # what the cap counts the connection as
        self.deadline: asyncio.TimerHandle | None = None
        self.phase = ""

    def admit(self, transport: Any) -> bool:
        """Note the connection's identity; False (and the connection closed) when the
        identity already holds its share of connections. Where clients have no
        certificate (the capture listener, `by_address`), the share is per client
        address (IPv6 by its /64): one host's slow connections, each within the read
        deadlines, were bounded by nothing else (the capture review). A listener with
        ``max_connections`` (the capture listener's) holds no more in all: from many
        addresses, they took the process's file descriptors, the mTLS API's too."""
        total = self.limits.max_connections  # the listener's in all (session 35)
        if total is not None and len(self.protocol.connections) > total:
            _log.warning("connection refused: the listener holds its most", limit=total)
            _refuse(transport)
            return False
        self.identity = self.key = _identity(transport)
        if self.key is None and self.limits.by_address:
            peer = transport.get_extra_info("peername")
            self.key = f"address {address_key(str(peer[0]))}" if peer else None
        if self.key is not None:
            same = sum(
                1
                for other in self.protocol.connections
                if getattr(other, "cofre_connection_key", None) == self.key
            )
            if same > self.limits.max_connections_per_identity:
                _log.warning(
                    "connection refused: too many connections for this identity",
                    identity=self.key,
                    limit=self.limits.max_connections_per_identity,
                )
                _refuse(transport)
                return False
        return True

    def arm(self, phase: str) -> None:
        self.disarm()
        seconds = self.limits.header_timeout if phase == "headers" else self.limits.body_timeout
        self.phase = phase
        self.deadline = self.protocol.loop.call_later(seconds, self._expire, phase)

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline, self.phase = None, ""

    def _expire(self, phase: str) -> None:
        self.deadline, self.phase = None, ""
        transport = self.protocol.transport
        if transport.is_closing():
            return
        client = self.protocol.client
        _log.warning(
            "connection closed: request not read in time",
            phase=phase,
            identity=self.identity,
            peer=f"{client[0]}:{client[1]}" if client else None,
        )
        transport.close()


def _refuse(transport: Any) -> None:
    """Drop a refused connection at once. Closing a TLS transport waits for the peer's
    close_notify (asyncio's TLS shutdown: up to 30 s), and until it ends the connection
    is still among the listener's and holds its descriptor: a peer that never read its
    refusal kept each refused connection counted against the bounds it was refused by,
    so a flood of refused connections filled them (session 37)."""
    transport.abort()


def _identity(transport: Any) -> str | None:
    extension = tls_extension(transport.get_extra_info("ssl_object"))
    chain = (extension or {}).get("client_cert_chain") or []
    if not chain:
        return None
    try:
        return identity_from_pem(chain[0])
    except IdentityMissing:
        # Answered 401 by the app, but the connection is held all the same: capped per
        # certificate (its SHA-256 fingerprint), or one such certificate would open
        # connections without bound.
        return "unidentified:" + certificate_summary(chain[0])[2]
