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
from vault.relay import RelayClient

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
