"""Connection limits: a deadline for a request's headers and one for its body, and a cap
on concurrent connections per client identity.

IN PCI SCOPE. An outside review held a half-sent request open and the vault waited
forever: each such connection holds a socket and a TLS session, and enough of them starve
everyone. uvicorn 0.54 has a keep-alive timeout between requests but no deadline while a
request is being read, so `GuardedH11Protocol` (built by `guarded_protocol`) adds them:
the headers must be complete within `header_timeout` seconds of the connection opening or
of the request's first byte, and the body within `body_timeout` seconds of the headers.
On expiry the connection is closed (nothing reached the app, so nothing is undone) and
a warning names the peer and the phase. The per-identity cap refuses (closes) a new
connection beyond `max_connections_per_identity`; its default is far above what a busy
client's connection pool holds (hundreds of keep-alive connections are normal).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import structlog

from api.errors import IdentityMissing
from api.tls import TLSIdentityH11Protocol, identity_from_pem, tls_extension

_log = structlog.get_logger("cofre.api.connections")


class GuardedH11Protocol(TLSIdentityH11Protocol):
    """`TLSIdentityH11Protocol` with read deadlines and the per-identity cap (the class
    attributes are set by `guarded_protocol`)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections_per_identity: int = 2000

    _read_deadline: asyncio.TimerHandle | None = None
    _deadline_phase: str = ""
    cofre_identity: str | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.cofre_identity = _identity(transport)
        if self.cofre_identity is not None:
            same = sum(
                1
                for other in self.connections
                if getattr(other, "cofre_identity", None) == self.cofre_identity
            )
            if same > self.max_connections_per_identity:
                _log.warning(
                    "connection refused: too many connections for this identity",
                    identity=self.cofre_identity,
                    limit=self.max_connections_per_identity,
                )
                transport.close()
                return
        # A connection that sends nothing is held to the header deadline too.
        self._arm("headers", self.header_timeout)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow_state()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Between requests uvicorn's keep-alive timeout applies; the next request's first
        # byte arms the header deadline again.
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _follow_state(self) -> None:
        state = self.conn.their_state
        if state is h11.IDLE:
            if self.conn.trailing_data[0] and self._deadline_phase != "headers":
                self._arm("headers", self.header_timeout)
        elif state is h11.SEND_BODY:
            if self._deadline_phase != "body":
                self._arm("body", self.body_timeout)
        else:
            self._disarm()

    def _arm(self, phase: str, seconds: float) -> None:
        self._disarm()
        self._deadline_phase = phase
        self._read_deadline = self.loop.call_later(seconds, self._expire, phase)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
        self._read_deadline, self._deadline_phase = None, ""

    def _expire(self, phase: str) -> None:
        self._read_deadline, self._deadline_phase = None, ""
        if self.transport.is_closing():
            return
        _log.warning(
            "connection closed: request not read in time",
            phase=phase,
            identity=self.cofre_identity,
            peer=f"{self.client[0]}:{self.client[1]}" if self.client else None,
        )
        self.transport.close()


def _identity(transport: Any) -> str | None:
    extension = tls_extension(transport.get_extra_info("ssl_object"))
    chain = (extension or {}).get("client_cert_chain") or []
    if not chain:
        return None
    try:
        return identity_from_pem(chain[0])
    except IdentityMissing:
        return None  # answered 401 by the app; counted as no identity


def guarded_protocol(
    *, header_timeout: float, body_timeout: float, max_connections_per_identity: int
) -> type[GuardedH11Protocol]:
    """The protocol class for uvicorn's ``http=`` setting, with these limits."""
    return type(
        "CofreH11Protocol",
        (GuardedH11Protocol,),
        {
            "header_timeout": header_timeout,
            "body_timeout": body_timeout,
            "max_connections_per_identity": max_connections_per_identity,
        },
    )
