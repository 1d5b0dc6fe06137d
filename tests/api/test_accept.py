"""The TLS listener that accepts each connection itself (`api.accept`), on asyncio's
loop (`cofre serve`'s API listener) and on uvloop's (uvicorn's default: the capture
listener's thread, the test servers): real sockets, real TLS, the dev PKI.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ClassVar

import pytest
import uvloop

from api.accept import TLSListener, listening_socket
from api.pki import DevPKI, ensure_dev_pki
from api.tls import harden_server_context

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return ensure_dev_pki(tmp_path_factory.mktemp("accept-pki"), identities=("payments",))


def _server_context(pki: DevPKI) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    context.load_verify_locations(str(pki.ca))
    harden_server_context(context, min_version="1.3")
    return context


def _client_context(pki: DevPKI, *, certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if certificate:
        context.load_cert_chain(str(pki.client_cert("payments")), str(pki.client_key("payments")))
    return context


async def _tls(
    pki: DevPKI, port: int, *, certificate: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1",
        port,
        ssl=_client_context(pki, certificate=certificate),
        server_hostname="localhost",
    )


class _Echo(asyncio.Protocol):
    """Answers each chunk with itself; `made` counts handshakes that completed."""

    made = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        type(self).made += 1
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def _run(loop_name: str, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(body())


async def _listen(
    pki: DevPKI, reports: list[tuple[str, str | None]], deadline: float | None = 10.0
) -> TLSListener:
    loop = asyncio.get_running_loop()
    listener = TLSListener(
        loop,
        listening_socket("127.0.0.1", 0),
        _Echo,
        _server_context(pki),
        handshake_timeout=deadline,
        report=lambda exc, peer: reports.append((_reason(exc), peer)),
        owns_socket=True,
    )
    listener.start()
    return listener


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or type(exc).__name__)


def _port(listener: TLSListener) -> int:
    return int(listener.sockets[0].getsockname()[1])


async def _until(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within the deadline")


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_good_client_is_served_and_a_bad_one_is_reported_with_its_peer(
    loop_name: str, pki: DevPKI
) -> None:
    async def body() -> None:
        reports: list[tuple[str, str | None]] = []
        listener = await _listen(pki, reports)
        port = _port(listener)
        reader, writer = await _tls(pki, port, certificate=True)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()
        # No client certificate: TLS 1.3 fails it after the client's handshake ends.
        reader, writer = await _tls(pki, port, certificate=False)
        writer.write(b"ping")
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await reader.readexactly(4)
        writer.close()
        # Plain HTTP to the TLS port.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.read()
        writer.close()
        await _until(lambda: len(reports) >= 2)
        listener.close()
        assert {peer for _, peer in reports} == {"127.0.0.1"}
        reasons = sorted(reason for reason, _ in reports)
        assert reasons[1] == "PEER_DID_NOT_RETURN_A_CERTIFICATE", reasons
        assert reasons[0] in {"HTTP_REQUEST", "WRONG_VERSION_NUMBER"}, reasons

    _Echo.made = 0
    _run(loop_name, body)
    assert _Echo.made == 1


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_peer_that_never_starts_tls_is_cut_at_the_deadline_and_reported(
    loop_name: str, pki: DevPKI
) -> None:
    async def body() -> None:
        reports: list[tuple[str, str | None]] = []
        listener = await _listen(pki, reports, deadline=0.3)
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(listener))
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
        writer.close()
        await _until(lambda: len(reports) == 1)
        listener.close()
        assert reports[0][1] == "127.0.0.1"

    _run(loop_name, body)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_failed_handshakes_leave_no_descriptor_behind(loop_name: str, pki: DevPKI) -> None:
    """The loop owns an accepted socket once the listener hands it over: the listener
    never closes it itself (that number may be another connection's by then)."""

    async def body() -> None:
        reports: list[tuple[str, str | None]] = []
        listener = await _listen(pki, reports)
        port = _port(listener)

        async def fail(times: int) -> None:
            for _ in range(times):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"not tls at all\r\n\r\n")
                await reader.read()
                writer.close()
                await writer.wait_closed()

        await fail(5)  # the loop opens what it opens lazily (libuv's io_uring) first
        await _until(lambda: len(reports) == 5)
        before = len(os.listdir("/proc/self/fd"))
        await fail(50)
        await _until(lambda: len(reports) == 55)
        await _until(lambda: len(os.listdir("/proc/self/fd")) <= before)
        listener.close()

    _run(loop_name, body)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_close_stops_accepting_and_closes_a_socket_it_owns(loop_name: str, pki: DevPKI) -> None:
    async def body() -> None:
        listener = await _listen(pki, [])
        port = _port(listener)
        assert listener.is_serving()
        listener.close()
        listener.close()  # idempotent
        await listener.wait_closed()
        assert not listener.is_serving()
        assert listener.sockets[0].fileno() == -1
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)

    _run(loop_name, body)


class _Shutdown(_Echo):
    """`_Echo` with uvicorn's protocols' ``shutdown`` (a server's shutdown calls it on
    each connection): an idle connection closes."""

    shut: ClassVar[list[_Shutdown]] = []

    def shutdown(self) -> None:
        type(self).shut.append(self)
        self.transport.close()


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_handshake_that_ends_after_close_gets_its_connection_shut_down(
    loop_name: str, pki: DevPKI
) -> None:
    """A connection accepted before the listener closed (a drain began) whose handshake
    ends after: the server's shutdown never saw it, so the listener shuts it down as the
    server did the others. Served keep-alive, it held the drain to its timeout and had
    its last requests cancelled (review 34)."""

    async def body() -> None:
        _Shutdown.shut.clear()
        loop = asyncio.get_running_loop()
        listener = TLSListener(
            loop,
            listening_socket("127.0.0.1", 0),
            _Shutdown,
            _server_context(pki),
            handshake_timeout=10.0,
            report=lambda exc, peer: None,
            owns_socket=True,
        )
        listener.start()
        raw = socket.create_connection(("127.0.0.1", _port(listener)))  # no ClientHello yet
        await _until(lambda: bool(listener._handshakes))  # accepted: handshaking
        listener.close()
        reader, writer = await asyncio.open_connection(
            sock=raw, ssl=_client_context(pki, certificate=True), server_hostname="localhost"
        )
        await _until(lambda: len(_Shutdown.shut) == 1)
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            assert await reader.read() == b""  # closed by the server
        writer.close()

    _run(loop_name, body)


class _Exhausted(socket.socket):
    """A listening socket whose first accept fails as when the process is out of file
    descriptors (EMFILE): the kernel's condition, which a test cannot cause safely."""

    failures = 1

    def accept(self) -> tuple[socket.socket, Any]:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return super().accept()


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_out_of_descriptors_pauses_accepting_then_resumes(
    loop_name: str, pki: DevPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As asyncio's own server: a socket that is readable but cannot be accepted from
    is left alone for a second, not polled in a busy loop."""
    monkeypatch.setattr("api.accept.ACCEPT_RETRY_SECONDS", 0.2)

    async def body() -> None:
        sock = _Exhausted(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        listener = TLSListener(
            asyncio.get_running_loop(),
            sock,
            _Echo,
            _server_context(pki),
            handshake_timeout=10.0,
            report=lambda exc, peer: None,
            owns_socket=True,
        )
        listener.start()
        reader, writer = await _tls(pki, _port(listener), certificate=True)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        writer.close()
        assert sock.failures == 0
        listener.close()

    _run(loop_name, body)


def test_listening_socket_reports_a_port_in_use(tmp_path: Path) -> None:
    first = listening_socket("127.0.0.1", 0)
    first.listen()
    try:
        with pytest.raises(OSError, match="in use"):
            listening_socket("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()
