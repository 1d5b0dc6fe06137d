"""Review 40's residual: the name lookup was the one step of a relay its route's
`timeout_seconds` did not bound. `getaddrinfo` takes no timeout, and a resolver that
does not answer held the relay thread and its caller for the resolver's own retries
(resolv.conf's timeout times attempts, per name server). The resolver here is a
stand-in that hangs until the test lets it go."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.fake_acquirer import plain_route as _route
from tests.vault.test_relay_deadline import Handler, _Upstream, upstream
from vault.errors import UpstreamTimeout, UpstreamUnavailable
from vault.relay_client import MAX_LOOKUPS, RelayClient

__all__ = ["upstream"]  # the fixture, imported for the tests here


class _HungResolver:
    """`getaddrinfo` that waits for `release` (at most 30 s, so that an unbounded relay
    ends the test with a wrong answer, not a hang), then answers 127.0.0.1 for any name."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, host: str, port: int, **kwargs: Any) -> list[Any]:
        self.calls += 1
        self.release.wait(30)
        return socket.getaddrinfo("127.0.0.1", port, **kwargs)


@pytest.fixture
def hung() -> Iterator[_HungResolver]:
    resolver = _HungResolver()
    yield resolver
    resolver.release.set()


def _ok(connection: socket.socket) -> None:
    body = b"{}"
    connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)


def test_a_lookup_that_hangs_ends_with_the_routes_timeout(
    upstream: Callable[[Handler], _Upstream], hung: _HungResolver
) -> None:
    server = upstream(_ok)
    client = RelayClient()
    client._backend._resolve = hung
    try:
        with pytest.raises(UpstreamTimeout):
            client.send("acq", _route(server.port, timeout_seconds=0.5), {"amount": 1})
        assert hung.calls == 1
        assert not hung.release.is_set()  # answered while the lookup still hangs
    finally:
        client.close()


def test_hung_lookups_take_threads_up_to_a_bound_never_relays(
    upstream: Callable[[Handler], _Upstream], hung: _HungResolver
) -> None:
    """Past `MAX_LOOKUPS` hung lookups (of as many names: relays to one name wait for
    its one lookup, `tests/vault/test_relay_lookup_attacks.py`) the next relay does not
    start another: it waits for one within its own deadline. Once the resolver
    answers, relays go through."""
    server = upstream(_ok)
    client = RelayClient()
    client._backend._resolve = hung
    try:
        for n in range(MAX_LOOKUPS + 3):
            route = _route(server.port, timeout_seconds=0.2)
            route = route.model_copy(update={"upstream": f"http://n{n}.invalid:{server.port}/"})
            with pytest.raises(UpstreamTimeout):
                client.send("acq", route, {"amount": 1})
        assert hung.calls == MAX_LOOKUPS
        hung.release.set()
        result = client.send("acq", _route(server.port, timeout_seconds=10.0), {"amount": 1})
        assert result.status == 200
    finally:
        client.close()


def test_a_name_that_does_not_resolve_is_unavailable_as_before(
    upstream: Callable[[Handler], _Upstream],
) -> None:
    def unknown(host: str, port: int, **kwargs: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    client = RelayClient()
    client._backend._resolve = unknown
    try:
        with pytest.raises(UpstreamUnavailable):
            client.send("acq", _route(upstream(_ok).port, timeout_seconds=5.0), {"amount": 1})
    finally:
        client.close()
