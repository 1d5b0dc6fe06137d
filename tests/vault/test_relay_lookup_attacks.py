"""Attacks on the relay's bounded name lookup (review 40's residual, `MAX_LOOKUPS`).

A lookup that hangs is left running in a daemon thread once its relay gives up, and at
most `MAX_LOOKUPS` run at once per process. That bound was one for every route: the
lookups of one route whose upstream's name does not resolve in time (a broken or hostile
acquirer's DNS, or a caller sending relays to that route) took all of them, and every
other route's relays then timed out waiting for a lookup of their own, healthy, name.
Review 37 gave each route places of its own so that one slow upstream holds only its
own; the lookups must not hand that back."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support.fake_acquirer import plain_route as _route
from tests.vault.test_relay_deadline import Handler, _Upstream, upstream
from vault.errors import UpstreamTimeout
from vault.relay_client import MAX_LOOKUPS, RelayClient

__all__ = ["upstream"]  # the fixture, imported for the tests here


class _OneNameHangs:
    """`getaddrinfo` that hangs (until `release`, at most 30 s) for `slow.invalid` and
    answers 127.0.0.1 at once for any other name."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.hung = 0
        self._lock = threading.Lock()

    def __call__(self, host: str, port: int, **kwargs: Any) -> list[Any]:
        if host == "slow.invalid":
            with self._lock:
                self.hung += 1
            self.release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return socket.getaddrinfo("127.0.0.1", port, **kwargs)


@pytest.fixture
def resolver() -> Iterator[_OneNameHangs]:
    hangs = _OneNameHangs()
    yield hangs
    hangs.release.set()


def _ok(connection: socket.socket) -> None:
    body = b"{}"
    connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)


def test_one_routes_hung_lookups_leave_other_routes_relaying(
    upstream: Callable[[Handler], _Upstream], resolver: _OneNameHangs
) -> None:
    server = upstream(_ok)
    slow = _route(server.port, timeout_seconds=0.3)
    slow = slow.model_copy(update={"upstream": f"http://slow.invalid:{server.port}/auth"})
    healthy = _route(server.port, timeout_seconds=2.0)
    healthy = healthy.model_copy(update={"upstream": f"http://acq.invalid:{server.port}/auth"})
    client = RelayClient()
    client._backend._resolve = resolver

    def relay_slow(_: int) -> None:
        with pytest.raises(UpstreamTimeout):
            client.send("slow", slow, {"amount": 1})

    try:
        # Twice the bound, as a caller keeps sending: each relay times out, its
        # lookup hangs on.
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(relay_slow, range(2 * MAX_LOOKUPS)))
        # The other route's name resolves at once: its relay must go through.
        result = client.send("acq", healthy, {"amount": 1})
        assert result.status == 200
        # And the hung name holds few threads, not one per relay sent to it.
        assert resolver.hung < MAX_LOOKUPS
    finally:
        resolver.release.set()
        client.close()
