"""Review 40 of the relay's deadline and places (commit 70ce60b): what still got past
them. Upstreams are raw sockets, as in `test_relay_deadline`."""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from api.routes import _offload
from policies.errors import PolicyError
from policies.loader import parse_policy
from policies.models import MAX_RELAY_PLACES, RelayRoute
from tests.support.fake_acquirer import plain_route as _route
from tests.vault.conftest import TEST_POLICY
from tests.vault.test_relay_deadline import Handler, _send, _Upstream, upstream
from vault._relay_answer import MAX_ANSWER_BYTES
from vault.errors import UpstreamTimeout, UpstreamUnavailable
from vault.relay import RelayResult
from vault.relay_client import RelayClient

__all__ = ["upstream"]  # the fixture, imported for the tests here


def _answer_with(head: bytes, body: bytes) -> Handler:
    def handler(connection: socket.socket) -> None:
        connection.sendall(head + b"content-length: %d\r\n\r\n" % len(body) + body)

    return handler


def test_a_layered_compressed_answer_is_never_decoded_whole_into_memory(
    upstream: Callable[[Handler], _Upstream],
) -> None:
    """F1. The 1 MiB bound was checked only after httpx decoded a whole network chunk,
    and httpx decodes without an output bound: ``content-encoding: gzip, gzip`` (the
    vault asked for identity; httpx decodes it anyway) takes a few KB on the wire to as
    much memory as the upstream likes in one allocation (64 MiB here; 10 GB is a few
    more KB), in every relay thread at once. The relay must refuse it holding little
    more than the bound."""
    decoded = b'{"pad": "' + b"0" * (64 * MAX_ANSWER_BYTES) + b'"}'
    body = gzip.compress(gzip.compress(decoded, 9), 9)
    assert len(body) < 64 * 1024  # one read of the relay's
    server = upstream(_answer_with(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip, gzip\r\n", body))
    del decoded
    client = RelayClient()
    tracemalloc.start()
    try:
        with pytest.raises(UpstreamUnavailable):
            client.send("acq", _route(server.port, timeout_seconds=10.0), {"amount": 1})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        client.close()
    assert peak < 8 * MAX_ANSWER_BYTES, f"{peak / MAX_ANSWER_BYTES:.0f} MiB held at once"


def test_an_answer_exactly_at_the_bound_is_read(
    upstream: Callable[[Handler], _Upstream],
) -> None:
    """Held up: an answer of exactly `MAX_ANSWER_BYTES` (plain or gzip) is given."""
    body = b'{"pad": "' + b"x" * (MAX_ANSWER_BYTES - 11) + b'"}'
    assert len(body) == MAX_ANSWER_BYTES
    plain = upstream(_answer_with(b"HTTP/1.1 200 OK\r\n", body))
    packed = upstream(
        _answer_with(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\n", gzip.compress(body))
    )
    for server in (plain, packed):
        result = _send(_route(server.port, timeout_seconds=10.0))
        assert result.status == 200
        assert len(result.body["pad"]) == MAX_ANSWER_BYTES - 11


def _blackhole() -> tuple[socket.socket, list[socket.socket]]:
    """A listener whose accept queue is full: a connect to it waits for its timeout."""
    server = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = server.getsockname()[1]
    fillers: list[socket.socket] = []
    for _ in range(8):
        filler = socket.socket()
        filler.settimeout(0.2)
        try:
            filler.connect(("127.0.0.1", port))
        except OSError:
            filler.close()
            break
        fillers.append(filler)
    return server, fillers


def test_each_address_of_the_upstream_shares_the_routes_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """F4. The connect step got what was left of the deadline once, and
    `socket.create_connection` gives it to each address the name resolves to, one
    after the other: an upstream whose name has N addresses that do not answer (a dead
    AAAA beside the A, a pool of hosts) holds the relay N times its timeout. Timed: the
    outcome (504) is the same either way, only how long it took differs."""
    holes = [_blackhole() for _ in range(5)]
    real = socket.getaddrinfo

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "upstream.test":
            return real(host, port, *args, **kwargs)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", s.getsockname()[1]))
            for s, _ in holes
        ]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    route = _route(1, upstream="http://upstream.test/auth", timeout_seconds=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamTimeout):
            _send(route)
    finally:
        for server, fillers in holes:
            for filler in fillers:
                filler.close()
            server.close()
    assert time.monotonic() - started < 1.5  # 2.5 s on 70ce60b: 0.5 s per address


@pytest.fixture
def stalled() -> Iterator[_Upstream]:
    release = threading.Event()
    server = _Upstream(lambda connection: release.wait(60))
    yield server
    release.set()
    server.close()


def _routes_of_64() -> dict[str, RelayRoute] | None:
    """Acquirers' routes (authorize, capture, refund, ...) at `max_in_flight` 64 (the
    most a route may have), one more than the relay threads hold, as a policy loads
    them; None if it refuses them."""
    routes = "".join(
        f"""
[relay_routes.acq-{name}]
upstream = "https://acquirer.example/{name}"
identities = ["spiffe://cofre/relayer"]
detokenize = ["/card/number"]
max_in_flight = 64
"""
        for name in range(MAX_RELAY_PLACES // 64 + 1)
    )
    relayer = """
[identities."spiffe://cofre/relayer"]
scope = "out"
operations = ["relay", "detokenize_masked"]
reveal = "masked"
read_domains = ["spiffe://cofre/payments"]
"""
    try:
        return parse_policy(TEST_POLICY + relayer + routes, kind="toml").policy.relay_routes
    except PolicyError:
        return None


def test_a_stalled_acquirers_routes_leave_other_routes_a_relay_thread(
    stalled: _Upstream, upstream: Callable[[Handler], _Upstream]
) -> None:
    """F3. 70ce60b: "a stalled upstream holds its own route's places, not every
    route's". But the relay threads are 129, a route may hold up to 64 places, and a
    policy any number of routes: an acquirer with three routes at 64 (or nine at the
    default 16) that stalls takes every relay thread, and a relay to a healthy route
    waits in the executor's queue (not refused, not served) until a stalled one times
    out; so does every other relay call, refusals included, the queue unbounded. The
    three routes' relays all wait on the stalled upstream, then one relay goes to a
    healthy upstream: it must be answered while they wait (or the policy refused)."""
    loaded = _routes_of_64()
    if loaded is None:
        return  # the policy cannot give routes more places than there are relay threads
    healthy = upstream(_answer_with(b"HTTP/1.1 200 OK\r\n", b"{}"))
    client = RelayClient()
    plain = {"upstream": f"http://127.0.0.1:{stalled.port}/auth", "timeout_seconds": 10.0}
    routes = {name: route.model_copy(update=plain) for name, route in loaded.items()}

    def relay(name: str, route: RelayRoute) -> RelayResult:
        with client.slot(name, route, "spiffe://cofre/relayer"):
            return client.send(name, route, {"amount": 1})

    async def scenario() -> bool:
        waiting = [
            asyncio.ensure_future(_offload.kept(relay, name, route))
            for name, route in routes.items()
            for _ in range(route.max_in_flight)
        ]
        for _ in range(200):
            if stalled.connections >= min(len(waiting), _offload.RELAY_THREADS):
                break
            await asyncio.sleep(0.05)
        other = asyncio.ensure_future(
            _offload.kept(relay, "other", _route(healthy.port, timeout_seconds=5.0))
        )
        done, _ = await asyncio.wait([other], timeout=5)
        answered = other in done and other.result().status == 200
        client.close()
        await asyncio.gather(*waiting, other, return_exceptions=True)
        return answered

    assert asyncio.run(scenario()), "the healthy route's relay waited for a relay thread"


def test_an_answer_in_a_coding_the_vault_cannot_read_is_refused(
    upstream: Callable[[Handler], _Upstream],
) -> None:
    """With the fix: an answer the vault cannot decode (brotli, zstd, anything else) it
    cannot mask either; httpx passed an unknown coding through as if plain, and decoded
    brotli or zstd unbounded where their packages are installed."""
    server = upstream(
        _answer_with(b"HTTP/1.1 200 OK\r\ncontent-encoding: br\r\n", b"\x8b\x00\x80{}\x03")
    )
    with pytest.raises(UpstreamUnavailable, match="content coding"):
        _send(_route(server.port, timeout_seconds=5.0))


def test_a_raw_deflate_answer_is_still_read(upstream: Callable[[Handler], _Upstream]) -> None:
    """With the fix: ``deflate`` as zlib or as raw deflate, as httpx read it."""
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw = packer.compress(b'{"status": "APPROVED"}') + packer.flush()
    for body in (zlib.compress(b'{"status": "APPROVED"}'), raw):
        server = upstream(_answer_with(b"HTTP/1.1 200 OK\r\ncontent-encoding: deflate\r\n", body))
        result = _send(_route(server.port, timeout_seconds=5.0))
        assert result.body == {"status": "APPROVED"}


def test_a_policy_gives_its_routes_at_most_a_relay_thread_each() -> None:
    """With the fix: routes' places beyond the relay threads are refused at load (the
    reload keeps the policy in force); as many as there are threads for load."""
    assert _routes_of_64() is None
    relayer = """
[identities."spiffe://cofre/relayer"]
operations = ["relay", "detokenize_masked"]
reveal = "masked"
read_domains = ["spiffe://cofre/payments"]
"""
    routes = "".join(
        f"""
[relay_routes.r{n}]
upstream = "https://acquirer.example/{n}"
identities = ["spiffe://cofre/relayer"]
detokenize = ["/card/number"]
"""
        for n in range(MAX_RELAY_PLACES // 16)
    )
    loaded = parse_policy(TEST_POLICY + relayer + routes, kind="toml").policy.relay_routes
    assert sum(route.max_in_flight for route in loaded.values()) == MAX_RELAY_PLACES
    assert _offload.RELAY_THREADS > MAX_RELAY_PLACES
