"""`api.accept` against what asyncio's and uvloop's own servers do: the addresses a TLS
listener binds (`api.lifecycle` routes uvicorn's host and port here), and a socket the
loop never took over."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
from typing import Any

import pytest
import uvloop

from api.accept import TLSListener, listening_socket
from api.errors import ApiError
from api.lifecycle import _bound_tls_handshakes, bind_reuse_port

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


async def _refused(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


def _dual_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolve ``dual.test`` to ::1 then 127.0.0.1, as Debian resolves ``localhost``."""
    original = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "dual.test":
            return original(host, port, *args, **kwargs)
        return original("::1", port, *args, **kwargs) + original("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_tls_listener_on_the_ipv6_wildcard_does_not_take_ipv4_too(loop_name: str) -> None:
    """As both loops' own servers (IPV6_V6ONLY): a listener configured on "::" is not
    also reachable over IPv4, where other firewall rules may apply."""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        _bound_tls_handshakes(loop)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server = await loop.create_server(asyncio.Protocol, host="::", port=0, ssl=context)
        try:
            port = server.sockets[0].getsockname()[1]
            assert await _refused("127.0.0.1", port)
            assert not await _refused("::1", port)
        finally:
            server.close()

    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(body())


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_tls_listener_serves_every_address_of_its_host(
    loop_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host name with an IPv6 and an IPv4 address (Debian's ``localhost``: ::1 first)
    is served on both, as the loops' own servers do, not on the first one only."""
    _dual_host(monkeypatch)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        _bound_tls_handshakes(loop)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        port = listening_socket("127.0.0.1", 0)
        free = port.getsockname()[1]
        port.close()
        server = await loop.create_server(
            asyncio.Protocol, host="dual.test", port=free, ssl=context
        )
        try:
            assert sorted(s.family for s in server.sockets) == [socket.AF_INET, socket.AF_INET6]
            assert not await _refused("127.0.0.1", free)
            assert not await _refused("::1", free)
        finally:
            server.close()
        assert all(s.fileno() == -1 for s in server.sockets)

    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(body())


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_socket_the_loop_never_took_over_is_closed_here(loop_name: str) -> None:
    """``connect_accepted_socket`` can fail before the loop owns the socket (here the
    protocol factory raises): the listener closes it then, rather than leave it to the
    garbage collector (an "unclosed socket" ResourceWarning, an error in this suite)."""

    def broken() -> asyncio.Protocol:
        raise RuntimeError("no protocol")

    async def body() -> None:
        loop = asyncio.get_running_loop()
        reports: list[str] = []
        listener = TLSListener(
            loop,
            listening_socket("127.0.0.1", 0),
            broken,
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
            handshake_timeout=5.0,
            report=lambda exc, peer: reports.append(type(exc).__name__),
            owns_socket=True,
        )
        listener.start()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", listener.sockets[0].getsockname()[1]
        )
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
        writer.close()
        listener.close()
        assert reports == ["RuntimeError"]

    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(body())


def test_workers_sockets_bind_like_the_single_process_listener(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`cofre serve --workers N` binds its own sockets (SO_REUSEPORT, `bind_reuse_port`):
    they cover every address of the host, the IPv6 ones IPv6-only, as one process's
    listener does; and a second worker can join the same port."""
    _dual_host(monkeypatch)
    probe = listening_socket("127.0.0.1", 0)
    free = probe.getsockname()[1]
    probe.close()
    first = bind_reuse_port("dual.test", free)
    second = bind_reuse_port("dual.test", free)
    wildcard = bind_reuse_port("::", 0)
    try:
        assert sorted(s.family for s in first) == [socket.AF_INET, socket.AF_INET6]
        for sock in (*first, *second, *wildcard):
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            if sock.family == socket.AF_INET6:
                assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        for sock in (*first, *second, *wildcard):
            sock.close()


def test_an_address_family_the_kernel_lacks_is_skipped_as_asyncio_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kernel booted without IPv6: getaddrinfo still offers "::" for all interfaces.
    asyncio's create_server (one process's health listener) skips that family; a
    worker's sockets must too, not keep the node from starting (review 21)."""
    real = socket.socket

    class NoIPv6(real):  # type: ignore[misc]
        def __init__(self, family: int = -1, *args: Any, **kwargs: Any) -> None:
            if family == socket.AF_INET6:
                raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
            super().__init__(family, *args, **kwargs)

    probe = listening_socket("127.0.0.1", 0)
    port = probe.getsockname()[1]
    probe.close()

    async def one_process() -> list[Any]:
        server = await asyncio.get_running_loop().create_server(
            asyncio.Protocol, host="", port=port
        )
        names = [s.getsockname() for s in server.sockets]
        server.close()
        return names

    monkeypatch.setattr(socket, "socket", NoIPv6)
    try:
        expected = asyncio.run(one_process())
        sockets = bind_reuse_port("", port)
    finally:
        monkeypatch.setattr(socket, "socket", real)
    try:
        assert [s.getsockname() for s in sockets] == expected == [("0.0.0.0", port)]  # noqa: S104
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.parametrize("busy", ["127.0.0.1", "::1"])
def test_a_taken_address_is_named_and_nothing_of_ours_stays_bound(
    busy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds one of a host's two addresses: the error says which, no
    descriptor is left open, and the other address is free again."""
    _dual_host(monkeypatch)
    family = socket.AF_INET6 if ":" in busy else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as foreign:
        foreign.bind((busy, 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(ApiError, match=rf"cannot listen on dual\.test:{port} \(.* on {busy}\)"):
            bind_reuse_port("dual.test", port)
        assert len(os.listdir("/proc/self/fd")) == before
        other = "::1" if busy == "127.0.0.1" else "127.0.0.1"
        with socket.socket(socket.AF_INET6 if ":" in other else socket.AF_INET) as free:
            free.bind((other, port))


def test_an_unknown_host_is_a_clear_api_error() -> None:
    with pytest.raises(ApiError, match=r"cannot listen on no-such-host\.invalid:8444 \(.+\)"):
        bind_reuse_port("no-such-host.invalid", 8444)


def test_out_of_descriptors_is_not_reported_as_a_missing_address_family(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review 22: only a family the kernel lacks (EAFNOSUPPORT) is skipped; a process
    out of descriptors must say so, not "no address can be opened here"."""

    class NoDescriptors(socket.socket):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(socket, "socket", NoDescriptors)
    with pytest.raises(ApiError, match="Too many open files"):
        bind_reuse_port("127.0.0.1", 0)


def test_out_of_descriptors_on_one_family_does_not_drop_it_silently(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """localhost is ::1 and 127.0.0.1: running out of descriptors on the second must
    not leave a worker listening on the first only."""
    _dual_host(monkeypatch)

    class SecondFails(socket.socket):
        def __init__(self, family: int = -1, *args: Any, **kwargs: Any) -> None:
            if family == socket.AF_INET:
                raise OSError(errno.EMFILE, "Too many open files")
            super().__init__(family, *args, **kwargs)

    monkeypatch.setattr(socket, "socket", SecondFails)
    sockets: list[socket.socket] = []
    try:
        with pytest.raises(ApiError, match="Too many open files"):
            sockets = bind_reuse_port("dual.test", 0)
    finally:
        for sock in sockets:
            sock.close()
