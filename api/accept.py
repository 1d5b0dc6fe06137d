"""A TLS listener that accepts each connection itself, so a failed handshake has a peer.

IN PCI SCOPE. Neither asyncio's nor uvloop's ``create_server`` tells anyone about a
failed server-side handshake: a client with a revoked, expired or foreign certificate,
or a scanner, would leave no trace (an ``ssl.SSLError`` is an ``OSError``, which both
loops' SSL protocols log only in debug mode, and uvloop's is a compiled class with no
hook). This listener accepts from its own socket, so it knows the peer address, and
hands each connection to the loop's public ``connect_accepted_socket`` with the TLS
context and the handshake deadline; that coroutine raises the handshake's failure. The
same on both loops; from there on the connection is the loop's, exactly as one its own
server accepted (TCP_NODELAY, the TLS transport, the app protocol's ``connection_made``
once the handshake is done).

uvicorn asks the loop for a server (`api.lifecycle.ManagedServer` routes a TLS one
here) and only needs ``close``, ``wait_closed`` and ``sockets`` of what it gets back.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import socket
import ssl
from collections.abc import Callable, Sequence
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any, Final

import structlog

from cofre.origins import address_key

__all__ = ["TLSListener", "listening_socket", "listening_sockets"]

_log = structlog.get_logger("cofre.tls")
# What asyncio's own server waits before accepting again when the process or the
# kernel is out of descriptors or memory (`asyncio.constants.ACCEPT_RETRY_DELAY`).
ACCEPT_RETRY_SECONDS: Final = 1.0
_OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

Report = Callable[[BaseException, str | None], None]


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket on `host`:`port`'s first address (SO_REUSEADDR, as asyncio's
    server binds), not yet listening. Raises ``OSError`` when it cannot be bound."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        _bind(sock, family, address, reuse_port=False)
    except OSError:
        sock.close()
        raise
    return sock


# A kernel without the address family (IPv6 turned off at boot): skipped, as asyncio does.
_MISSING_FAMILY = frozenset({errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT})


def listening_sockets(
    host: str | None, port: int, *, reuse_port: bool = False
) -> list[socket.socket]:
    """Bound TCP sockets on every address of `host` (all interfaces when None or empty)
    and `port`, not yet listening: what asyncio's ``create_server`` binds (with
    `reuse_port`, SO_REUSEPORT too, as its ``reuse_port=True``). As there, an address
    whose family this kernel cannot open a socket for (IPv6 turned off at boot) is
    skipped. Raises ``OSError`` naming the address (and closes any already bound) when
    one cannot be bound, or when no address is left."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as exc:
                if exc.errno in _MISSING_FAMILY:
                    continue
                raise
            sockets.append(sock)
            _bind(sock, family, address, reuse_port=reuse_port)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise OSError(errno.EAFNOSUPPORT, f"no address of {host!r} can be opened here")
    return sockets


def _bind(sock: socket.socket, family: int, address: tuple[Any, ...], *, reuse_port: bool) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        # As both loops' servers: "::" is IPv6 only, not every IPv4 address too.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        # Which of the host's addresses: "localhost" is two, and either may be taken.
        raise OSError(exc.errno, f"{exc.strerror} on {address[0]}") from None


class TLSListener:
    """Accept TCP connections on `sock` (or each of several) and start TLS with
    `context` on each, within `handshake_timeout` seconds (None: the loop's default,
    60 s); `report` is called with each failed handshake's exception and the peer's
    address. With `context` None the connections are plain (the health listener, since
    session 46: CPython 3.11's own accept loop does not stop at ``EMFILE`` and logged a
    traceback for each of a backlog's worth of tries at every wake-up, 1,247 lines in
    about 1.5 s, where this one logs a line and pauses a second). The sockets stay the
    caller's to close (uvicorn closes the sockets it was given) unless `owns_socket`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket | Sequence[socket.socket],
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        context: ssl.SSLContext | None,
        *,
        handshake_timeout: float | None,
        report: Report,
        backlog: int = 100,
        owns_socket: bool = False,
        bound: tuple[int, int] | None = None,
        exempt: Sequence[IPv4Network | IPv6Network] = (),
    ) -> None:
        self._loop = loop
        self._factory = protocol_factory
        self._context = context
        self._timeout = handshake_timeout
        self._report = report
        self._backlog = backlog
        self._owns_socket = owns_socket
        self._serving = False
        self._retry: asyncio.TimerHandle | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._bound = bound
        self._exempt = tuple(exempt)
        self._pending_by: dict[str, int] = {}  # handshakes under way per address key
        self.sockets = [sock] if isinstance(sock, socket.socket) else list(sock)

    def start(self) -> None:
        for sock in self.sockets:
            sock.setblocking(False)
            sock.listen(self._backlog)
        self._serving = True
        self._add_readers()

    def _add_readers(self) -> None:
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _remove_readers(self) -> None:
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())

    def is_serving(self) -> bool:
        return self._serving

    def _accept(self, sock: socket.socket) -> None:
        # As asyncio's server: up to a backlog's worth per wake-up, so a burst of
        # connections costs one poll, not one each.
        for _ in range(self._backlog):
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                # Out of descriptors (or the socket broke): stop reading the socket for
                # a second rather than spin on a readable socket we cannot accept from.
                _log.error(
                    "cannot accept connections",
                    error=errno.errorcode.get(exc.errno or 0, type(exc).__name__),
                    retry_seconds=ACCEPT_RETRY_SECONDS,
                    out_of_resources=exc.errno in _OUT_OF_RESOURCES,
                )
                self._remove_readers()  # all of them, as asyncio's server
                if self._retry is not None:
                    self._retry.cancel()
                self._retry = self._loop.call_later(ACCEPT_RETRY_SECONDS, self._resume)
                return
            conn.setblocking(False)
            peer = address[0] if isinstance(address, tuple) and address else None
            key = address_key(str(peer)) if peer else ""
            if self._refused(key, shares=not self._is_exempt(peer)):
                conn.close()
                continue
            self._pending_by[key] = self._pending_by.get(key, 0) + 1
            task = self._loop.create_task(self._handshake(conn, peer))
            self._handshakes.add(task)
            task.add_done_callback(functools.partial(self._handshake_done, key))

    def _is_exempt(self, peer: str | None) -> bool:
        """Whether `peer` is in an `exempt` network (a load balancer that terminates
        TCP, session 39: all its clients are its one address, and its share of the
        handshakes was theirs together)."""
        if not self._exempt or not peer:
            return False
        try:
            address = ip_address(peer.partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._exempt)

    def _refused(self, key: str, *, shares: bool = True) -> bool:
        """Whether a new connection from the address `key` finds every handshake place,
        or (when it `shares`, not from an `exempt` network) its address's share of
        them, taken (`bound`: in all, per address). Review
        35b: the capture listener's connection bounds count a connection once its
        handshake is done (`api._connection_limits`); one that never sends a
        ClientHello held its descriptor to the handshake deadline with no bound at all,
        as many as a client opened in that time: the process's descriptors, which the
        mTLS API shares. Per address too, or one address would take every place from
        the shoppers."""
        if self._bound is None:
            return False
        total, per_address = self._bound
        if len(self._handshakes) < total and (
            not shares or self._pending_by.get(key, 0) < per_address
        ):
            return False
        _log.warning("connection refused: too many TLS handshakes under way", limit=total)
        return True

    def _handshake_done(self, key: str, task: asyncio.Task[None]) -> None:
        self._handshakes.discard(task)
        left = self._pending_by[key] - 1
        if left:
            self._pending_by[key] = left
        else:
            del self._pending_by[key]  # addresses come and go: no entry left behind

    def _resume(self) -> None:
        self._retry = None
        if self._serving:
            self._add_readers()

    async def _handshake(self, conn: socket.socket, peer: str | None) -> None:
        # Both loops take `conn` over before their first suspension (awaiting the
        # handshake); this marks whether it came. Once the loop owns `conn` it closes
        # it (or detaches it, on uvloop) when the transport closes, on a failed
        # handshake too, so it is not closed here (its descriptor number may already
        # be another connection's). A failure before that (a check, the protocol
        # factory, the transport's creation) leaves it ours to close.
        suspended: list[bool] = []
        marker = self._loop.call_soon(suspended.append, True)
        try:
            if self._context is None:  # plain HTTP (the health listener)
                transport, _ = await self._loop.connect_accepted_socket(self._factory, conn)
            else:
                transport, _ = await self._loop.connect_accepted_socket(
                    self._factory, conn, ssl=self._context, ssl_handshake_timeout=self._timeout
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is the peer's, and reported
            if not suspended:
                conn.close()
            self._report(exc, peer)
            return
        finally:
            marker.cancel()
        if not self._serving:
            _closing_late(transport)

    def close(self) -> None:
        """Stop accepting; established connections go on, as with asyncio's own server.
        A handshake under way goes on too, but its connection is then shut down as the
        server's shutdown did the others (`_closing_late`)."""
        if not self._serving:
            return
        self._serving = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        else:
            self._remove_readers()
        if self._owns_socket:
            for sock in self.sockets:
                sock.close()

    async def wait_closed(self) -> None:
        return None


def _closing_late(transport: asyncio.BaseTransport) -> None:
    """Shut down a connection whose handshake ended after the listener closed: uvicorn's
    shutdown told each connection it had then to close (``shutdown``: an idle one closes
    at once, one with a request under way answers it with ``Connection: close``), and
    this one it never saw. Served keep-alive, it held the drain to its timeout, and its
    requests in flight at the deadline were cancelled with a plain-text 500 while the
    vault committed them (review 34). A protocol without ``shutdown`` is closed. (The
    app's protocol is the transport's: uvloop's ``connect_accepted_socket`` returns its
    own TLS protocol with the transport, asyncio's the app's.)"""
    shutdown = getattr(transport.get_protocol(), "shutdown", None)
    if callable(shutdown):
        shutdown()
    else:
        transport.close()
