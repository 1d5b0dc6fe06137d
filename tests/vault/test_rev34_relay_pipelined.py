"""Review 34: an answer an upstream sent ahead, behind the answer to the relay under way
(in the same bytes, on a kept-alive connection), was taken by the route's *next* relay
as its own answer: the next caller (another identity, another card) got what the
upstream made of the earlier request, and the vault withheld from it only what the
next relay had sent (its security code, name, expiry, PAN shapes), not the earlier
card's; a `response_tokenize` pointer in it tokenized the earlier card into the next
caller's domain. A load balancer or a framework that writes a second response after an
error (often an echo of the request) does this without meaning to. A connection with
bytes left after its answer is now never used again."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.support.fake_acquirer import plain_route
from tests.support.tcp import ThreadedTcpServer
from tests.support.wire import read_response
from vault.relay_client import RelayClient

SENT_AHEAD = {"status": "DECLINED", "echo": "cvv 7391 for ANA SOUZA"}


def _answer(payload: object) -> bytes:
    body = json.dumps(payload).encode()
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


class _AheadUpstream(ThreadedTcpServer):
    """Plain HTTP; answers each request with its number, and (`ahead`) the first one
    with a second answer sent ahead in the same bytes."""

    def __init__(self, *, ahead: bool) -> None:
        self._ahead = ahead
        self.requests = 0
        self._lock = threading.Lock()
        super().__init__()

    def _run(self, connection: socket.socket) -> None:
        with connection:
            while True:
                try:
                    read_response(connection)
                except (OSError, EOFError):
                    return
                with self._lock:
                    self.requests += 1
                    number = self.requests
                ahead = _answer(SENT_AHEAD) if self._ahead and number == 1 else b""
                try:
                    connection.sendall(_answer({"request": number}) + ahead)
                except OSError:
                    return


def _relay_twice(upstream: _AheadUpstream) -> tuple[object, object]:
    route = plain_route(upstream.port, timeout_seconds=10.0)
    client = RelayClient()
    try:
        first = client.send("acq", route, {"card": {"number": "4111111111111111"}})
        second = client.send("acq", route, {"card": {"number": "5555555555554444"}})
    finally:
        client.close()
    return first.body, second.body


@pytest.fixture
def upstream(request: pytest.FixtureRequest) -> Iterator[_AheadUpstream]:
    server = _AheadUpstream(ahead=request.param)
    yield server
    server.close()


@pytest.mark.parametrize("upstream", [True], indirect=True)
def test_an_answer_sent_ahead_is_never_the_next_relays_answer(upstream: _AheadUpstream) -> None:
    assert _relay_twice(upstream) == ({"request": 1}, {"request": 2})
    assert upstream.connections == 2


@pytest.mark.parametrize("upstream", [False], indirect=True)
def test_a_connection_with_nothing_past_its_answer_is_still_reused(
    upstream: _AheadUpstream,
) -> None:
    assert _relay_twice(upstream) == ({"request": 1}, {"request": 2})
    assert upstream.connections == 1
