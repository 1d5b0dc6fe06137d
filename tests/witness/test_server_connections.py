"""The witness's listener handles a bounded number of connections at once: at most
`MAX_CONNECTIONS`, and `MAX_PER_ADDRESS` from one IP address. A connection over either
is closed at once, with no thread started, and counted in `/metrics`. Before the fix
there was no bound: the read timeout closes a silent connection, but a client that
trickled a byte every 29 s over thousands of connections got a thread for each."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from api.pki import ensure_dev_pki
from tests.support.vectors import c2sp_notes
from tests.support.witness_process import WitnessProcess
from tests.witness.test_server_timeout import _config
from witness.server import MAX_CONNECTIONS, MAX_PER_ADDRESS, WitnessServer, _ConnectionLimit

# How long the test waits on the server; far below the read timeout the servers here
# are given, so that a connection closed within it was refused, not timed out.
GUARD = 10.0
READ_TIMEOUT = 120.0
OTHER_ADDRESS = "127.0.0.2"  # also this host's loopback (127/8), another client's address


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WitnessServer]:
    running = WitnessServer(_config(tmp_path), read_timeout=READ_TIMEOUT, max_connections=2)
    running.start()
    yield running
    running.stop()


def _connect(server: WitnessServer, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", server.port), timeout=GUARD, source_address=(source, 0)
    )


def _refused(connection: socket.socket) -> bool:
    """Whether the server closes `connection` (end of file or a reset) before the guard,
    with nothing to say first, while the client has said nothing either."""
    connection.settimeout(GUARD)
    try:
        return connection.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False  # still open: the server is handling it
    finally:
        connection.close()


def _get(server: WitnessServer, path: str, source: str = "127.0.0.1") -> bytes:
    """The whole answer to GET `path` on a new connection (b"" if closed unanswered)."""
    try:
        with _connect(server, source) as client:
            client.sendall(f"GET {path} HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := client.recv(4096):
                answer += chunk
            return answer
    except ConnectionResetError:
        return b""


def _served(server: WitnessServer, source: str = "127.0.0.1") -> bool:
    """Whether GET /healthz is answered before the guard (the server may take a moment
    to see that a client closed one of its connections and free its place)."""
    deadline = time.monotonic() + GUARD
    while time.monotonic() < deadline:
        if _get(server, "/healthz", source).startswith(b"HTTP/1.1 200 "):
            return True
        time.sleep(0.05)
    return False


def _metric(server: WitnessServer, line_start: str, source: str = "127.0.0.1") -> int:
    answer = _get(server, "/metrics", source).decode()
    values = [line.rsplit(" ", 1)[1] for line in answer.splitlines() if line.startswith(line_start)]
    assert len(values) == 1, answer
    return int(values[0])


def test_the_witness_bounds_its_connections_by_default(tmp_path: Path) -> None:
    running = WitnessServer(_config(tmp_path))
    try:
        limit = running._http.limit
        assert (limit.total, limit.per_address) == (MAX_CONNECTIONS, MAX_PER_ADDRESS) == (64, 16)
    finally:
        running.stop()


def test_a_connection_over_the_limit_is_closed_at_once(server: WitnessServer) -> None:
    held = [_connect(server), _connect(server, OTHER_ADDRESS)]
    try:
        assert _refused(_connect(server))  # not the read timeout: that is 120 s
        assert _refused(_connect(server, OTHER_ADDRESS))
        assert server._http.limit.counts() == (2, {"max_connections": 2, "max_per_address": 0})
        held.pop().close()
        assert _served(server)
        # At least: _served may have tried before the server saw the close.
        assert (
            _metric(server, 'cofre_witness_connections_refused_total{limit="max_connections"}') >= 2
        )
        assert _metric(server, "cofre_witness_connections_open ") == 2  # held, /metrics'
    finally:
        for connection in held:
            connection.close()


def test_one_address_cannot_take_every_place(tmp_path: Path) -> None:
    running = WitnessServer(
        _config(tmp_path), read_timeout=READ_TIMEOUT, max_connections=4, max_per_address=2
    )
    running.start()
    held = [_connect(running), _connect(running)]
    try:
        assert _refused(_connect(running))
        assert _served(running, OTHER_ADDRESS)
        refused = 'cofre_witness_connections_refused_total{limit="max_per_address"}'
        assert _metric(running, refused, OTHER_ADDRESS) == 1
        held.pop().close()
        assert _served(running)
    finally:
        for connection in held:
            connection.close()
        running.stop()


def test_a_handler_that_raises_gives_its_place_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = WitnessServer(_config(tmp_path), read_timeout=READ_TIMEOUT, max_connections=1)
    handler = running._http.RequestHandlerClass

    def fail(_self: object) -> None:
        raise RuntimeError("handler bug")

    monkeypatch.setattr(handler, "do_POST", fail, raising=False)
    running.start()
    try:
        for _ in range(3):  # a place lost each time would refuse the second at once
            with _connect(running) as client:
                client.sendall(b"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\n\r\n")
                assert client.recv(1024) == b""  # closed unanswered, after the release
        assert _get(running, "/healthz").startswith(b"HTTP/1.1 200 ")
    finally:
        running.stop()


def test_a_failed_tls_handshake_gives_its_place_back(tmp_path: Path) -> None:
    pki = ensure_dev_pki(tmp_path / "pki", identities=())
    config = replace(_config(tmp_path), tls_cert=pki.server_cert, tls_key=pki.server_key)
    running = WitnessServer(config, read_timeout=READ_TIMEOUT, max_connections=1)
    running.start()
    try:
        for _ in range(3):
            with _connect(running) as client:
                client.sendall(b"GET /healthz HTTP/1.1\r\nHost: w\r\n\r\n")  # not TLS
                try:
                    while client.recv(1024):  # an alert, perhaps, then the close
                        pass
                except ConnectionResetError:
                    pass
        verify = ssl.create_default_context(cafile=str(pki.ca))
        answer = httpx.get(
            f"https://127.0.0.1:{running.port}/healthz", verify=verify, timeout=GUARD
        )
        assert answer.status_code == 200
    finally:
        running.stop()


def test_an_ipv6_host_counts_as_its_64_not_per_address() -> None:
    # A host is given a whole /64: counted per address, one client stepping through its
    # addresses had a budget per address and took every place (as review 28 found for
    # the capture listener, whose rule this is).
    limit = _ConnectionLimit(total=64, per_address=2)
    assert limit.admit("2001:db8:0:7::1") is None
    assert limit.admit("2001:db8:0:7::2") is None
    assert limit.admit("2001:db8:0:7:ffff::3") == "max_per_address"
    assert limit.admit("2001:db8:0:8::1") is None  # the next /64: another host
    # An IPv4 address mapped into IPv6 is that IPv4 address.
    assert limit.admit("192.0.2.7") is None
    assert limit.admit("::ffff:192.0.2.7") is None
    assert limit.admit("192.0.2.7") == "max_per_address"
    limit.release("2001:db8:0:7::2")  # released under the key it was counted under
    assert limit.admit("2001:db8:0:7::9") is None
    assert limit.counts()[0] == 5


def test_the_caps_are_set_on_the_command_line(tmp_path: Path) -> None:
    log_vkey = c2sp_notes()["witness"]["log_vkey"]
    # An operator behind a NAT of many publishers, or one with a single monitor, sets
    # them without code (`cofre witness serve --max-per-address`, or its environment
    # variable); the defaults are the module's.
    assert (MAX_CONNECTIONS, MAX_PER_ADDRESS) == (64, 16)  # the CLI's defaults repeat them
    process = WitnessProcess(tmp_path, [log_vkey], extra_args=["--max-per-address", "1"])
    process.start()
    try:
        port = int(process.url.rsplit(":", 1)[1].split("/", 1)[0])
        held = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
        try:
            second = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
            assert _refused(second)  # the second from this address: closed at once
        finally:
            held.close()
    finally:
        process.stop()
