"""Review 37: a relay's `timeout_seconds` bounds the whole call. httpx's timeouts are per
step (a connect, each read, each write): an upstream that sends its answer a byte at a
time, each byte within the step's limit, held a relay thread and its caller for as long
as it liked, and each retry started the clock again. An answer is also read only up to
`MAX_ANSWER_BYTES`, compressed or not.

Each test would pass on the old code only if the upstream's slow answer completed: the
assertions are on what the relay raised and how many tries the upstream saw, not on
how long anything took."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from policies.models import RelayRoute
from tests.support.fake_acquirer import plain_route
from tests.support.tcp import ThreadedTcpServer
from tests.support.wire import read_response
from vault._relay_answer import MAX_ANSWER_BYTES
from vault.errors import UpstreamTimeout, UpstreamUnavailable
from vault.relay import RelayResult
from vault.relay_client import RelayClient

Handler = Callable[[socket.socket], object]


class _Upstream(ThreadedTcpServer):
    """A plain-TCP upstream that runs `handler` on each connection it accepts."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        super().__init__()

    def _run(self, connection: socket.socket) -> None:
        try:
            read_response(connection)
            self._handler(connection)
        except OSError:
            pass  # the relay hung up: what the deadline is for
        finally:
            connection.close()


@pytest.fixture
def upstream() -> Iterator[Callable[[Handler], _Upstream]]:
    started: list[_Upstream] = []

    def start(handler: Handler) -> _Upstream:
        started.append(_Upstream(handler))
        return started[-1]

    yield start
    for server in started:
        server.close()


def _send(route: RelayRoute) -> RelayResult:
    """`route`'s relay of a small body, the client closed after: a pooled connection
    left open warns (ResourceWarning, an error here) in whatever test collects it."""
    client = RelayClient()
    try:
        return client.send("acq", route, {"amount": 1})
    finally:
        client.close()


def _trickle(data: bytes, every: float) -> Handler:
    def handler(connection: socket.socket) -> None:
        for i in range(len(data)):
            connection.sendall(data[i : i + 1])
            time.sleep(every)

    return handler


def test_an_answer_trickled_a_byte_at_a_time_is_cut_at_the_routes_timeout(
    upstream: Callable[[Handler], _Upstream],
) -> None:
    # 40 bytes of body, one every 0.1 s: each read well within the 1 s step limit; the
    # whole answer takes 4 s.
    body = b'{"status": "APPROVED", "code": "0000000"}'
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    head += b"content-length: %d\r\n\r\n" % len(body)

    def handler(connection: socket.socket) -> None:
        connection.sendall(head)
        _trickle(body, 0.1)(connection)

    server = upstream(handler)
    with pytest.raises(UpstreamTimeout):
        _send(plain_route(server.port))


def test_a_status_line_trickled_a_byte_at_a_time_is_cut_at_the_routes_timeout(
    upstream: Callable[[Handler], _Upstream],
) -> None:
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
    server = upstream(_trickle(answer, 0.1))  # 7 s for the whole answer
    with pytest.raises(UpstreamTimeout):
        _send(plain_route(server.port))


def test_retries_share_the_routes_timeout(upstream: Callable[[Handler], _Upstream]) -> None:
    """An upstream that takes the request and never answers: the first try spends the
    whole timeout, so no retry starts (each had the full timeout again before)."""
    hang = threading.Event()
    server = upstream(lambda connection: hang.wait(10))
    route = plain_route(server.port, method="PUT", retries=3, timeout_seconds=1.0)
    try:
        with pytest.raises(UpstreamTimeout):
            _send(route)
    finally:
        hang.set()
    assert server.connections == 1


def test_a_retry_after_a_quick_failure_still_happens(
    upstream: Callable[[Handler], _Upstream],
) -> None:
    calls: list[int] = []

    def handler(connection: socket.socket) -> None:
        calls.append(1)
        status = b"503 Service Unavailable" if len(calls) == 1 else b"200 OK"
        head = b"HTTP/1.1 " + status + b"\r\nconnection: close\r\ncontent-length: 2\r\n\r\n"
        connection.sendall(head + b"{}")  # closed: the retry opens a new connection

    server = upstream(handler)
    route = plain_route(server.port, method="PUT", retries=1, timeout_seconds=5.0)
    result = _send(route)
    assert result.status == 200
    assert len(calls) == 2


def test_an_answer_larger_than_the_bound_is_refused(
    upstream: Callable[[Handler], _Upstream],
) -> None:
    body = b'{"pad": "' + b"x" * MAX_ANSWER_BYTES + b'"}'

    def handler(connection: socket.socket) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)

    server = upstream(handler)
    with pytest.raises(UpstreamUnavailable, match="more than"):
        _send(plain_route(server.port, timeout_seconds=10.0))


def test_a_compressed_answer_is_bounded_once_decoded(
    upstream: Callable[[Handler], _Upstream],
) -> None:
    """A gzip answer of a few KB that decodes to 16 MiB (the vault asks for none, but an
    upstream may send one anyway)."""
    body = gzip.compress(b'{"pad": "' + b"0" * (16 * MAX_ANSWER_BYTES) + b'"}')
    head = b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\n"
    head += b"content-length: %d\r\n\r\n" % len(body)

    def handler(connection: socket.socket) -> None:
        connection.sendall(head + body)

    server = upstream(handler)
    with pytest.raises(UpstreamUnavailable, match="more than"):
        _send(plain_route(server.port, timeout_seconds=10.0))


def test_the_relay_asks_for_an_uncompressed_answer(
    upstream: Callable[[Handler], _Upstream],
) -> None:
    seen: list[bytes] = []

    class Recording(_Upstream):
        def _run(self, connection: socket.socket) -> None:
            seen.append(connection.recv(65536))
            connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            connection.close()

    server = Recording(lambda connection: None)
    try:
        _send(plain_route(server.port))
    finally:
        server.close()
    assert b"accept-encoding: identity" in seen[0].lower()
