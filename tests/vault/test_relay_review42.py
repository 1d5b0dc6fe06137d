"""Review 42 of review 40's relay changes: what they broke or left open. Upstreams
are raw sockets, as in `test_relay_deadline`."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.fake_acquirer import plain_route as _route
from tests.vault.test_relay_deadline import Handler, _Upstream, upstream
from tests.vault.test_relay_review40 import _blackhole
from vault.relay_client import RelayClient

__all__ = ["upstream"]  # the fixture, imported for the tests here


def _ok(connection: socket.socket) -> None:
    body = b'{"ok": true}'
    connection.sendall(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body) + body
    )


def test_a_dead_first_address_leaves_the_next_one_time_to_answer(
    upstream: Callable[[Handler], _Upstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connect step tries the name's addresses one by one, each given all that is
    left of the relay's deadline: a first address that never answers (a dead AAAA
    beside a live A, a host of the pool that is down) takes the whole deadline, the
    live address is never tried, and every relay to the route fails 504. Before the
    whole-relay deadline such a relay succeeded (slowly); now it never does. Each
    address but the last must leave the ones after it a share of the time."""
    server, fillers = _blackhole()
    live = upstream(_ok)
    real = socket.getaddrinfo

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "upstream.test":
            return real(host, port, *args, **kwargs)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", server.getsockname()[1])),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", live.port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    route = _route(1, upstream="http://upstream.test/auth", timeout_seconds=2.0)
    client = RelayClient()
    try:
        result = client.send("acq", route, {"amount": 1})
    finally:
        client.close()
        for filler in fillers:
            filler.close()
        server.close()
    assert result.status == 200
    assert result.body == {"ok": True}


@pytest.mark.parametrize("coding", [b"br", b"zstd"], ids=["brotli", "zstd"])
def test_a_server_error_in_a_coding_the_vault_does_not_read_is_still_retried(
    upstream: Callable[[Handler], _Upstream], coding: bytes
) -> None:
    """A route with retries tries again after a 5xx, whatever its body: the vault never
    uses a server error's body. Since review 40 the body is read and decoded before the
    status is looked at, so a 503 whose body is in a coding the vault does not read
    (a proxy's or load balancer's error page, compressed as it likes) ends the relay
    upstream_unavailable at once, the retry the route asks for never made (httpx
    skipped a coding it did not know, and retried)."""
    calls: list[int] = []

    def handler(connection: socket.socket) -> None:
        calls.append(1)
        if len(calls) == 1:
            head = b"HTTP/1.1 503 Service Unavailable\r\ncontent-encoding: " + coding
            body = b"\x0b\x02\x80overloaded\x03"
        else:
            head, body = b"HTTP/1.1 200 OK\r\ncontent-type: application/json", b"{}"
        connection.sendall(
            head + b"\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body
        )

    server = upstream(handler)
    route = _route(server.port, method="PUT", retries=1, timeout_seconds=5.0)
    client = RelayClient()
    try:
        result = client.send("acq", route, {"amount": 1})
    finally:
        client.close()
    assert result.status == 200
    assert len(calls) == 2
