"""The relay's call to its upstream: HTTP clients per route, each call within its
route's deadline and places, the answer read bounded.

IN PCI SCOPE, holds card data: the body with PANs exists only in this process's memory
between detokenizing and sending. Upstreams are fixed per route in the policy (the
caller names a route, never a URL); TLS is verified against the route's CA bundle or the
system's. Retries happen only for routes declared idempotent. Moved out of
`vault.relay`, unchanged, so that each reads in one sitting.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpcore
import httpx

from cofre.tls import client_context
from policies.models import RelayRoute
from vault._relay_answer import answer_of, read_answer
from vault.errors import UpstreamBusy, UpstreamTimeout, UpstreamUnavailable
from vault.relay import RelayResult

# Name lookups under way at once per process (`_DeadlineBackend._addresses`): a resolver
# that hangs holds one each until it gives up, never a relay.
MAX_LOOKUPS: Final = 32


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every step (a read, a write, the TLS handshake) waits at most
    what is left of the relay under way in the calling thread (`_DeadlineBackend`)."""

    def __init__(self, stream: httpcore.NetworkStream, backend: _DeadlineBackend) -> None:
        self._stream = stream
        self._backend = backend
        # Bytes came after an answer (`_drop_if_more_came`): never used for another relay.
        self.spent = False

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._backend.cut(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._backend.cut(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        cut = self._backend.cut(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, cut), self._backend
        )

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self.spent:
            return True  # what httpcore asks before reusing a connection: it drops it
        return self._stream.get_extra_info(info)


class _Lookup:
    """One name lookup under way, which every relay to that name waits for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: list[Any] | Exception = []


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own network backend, with each step's timeout cut to what is left of
    the relay the calling thread runs (`until`). httpx's timeouts are per step: an
    upstream that trickles its answer a byte at a time, each within the step's limit,
    held a relay thread (and the caller) for as long as it liked (review 37). The name
    lookup is waited for within the deadline too (`_addresses`), and each address it
    gives is tried within what is left."""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()
        self._local = threading.local()
        self._lookups = threading.BoundedSemaphore(MAX_LOOKUPS)
        self._resolve: Callable[..., list[Any]] = socket.getaddrinfo  # a test's stand-in
        self._pending_lock = threading.Lock()
        self._pending: dict[tuple[str, int], _Lookup] = {}  # lookups under way, by name

    @contextlib.contextmanager
    def until(self, deadline: float) -> Iterator[None]:
        """Bound this thread's network steps by `deadline` (`time.monotonic`)."""
        self._local.deadline = deadline
        try:
            yield
        finally:
            self._local.deadline = None

    def cut(self, timeout: float | None, late: type[Exception]) -> float:
        """`timeout` cut to what is left before this thread's deadline; raises `late`
        (httpcore's timeout of the step, which httpx maps to its own) once none is."""
        deadline: float | None = getattr(self._local, "deadline", None)
        if deadline is None:
            if timeout is None:
                raise late("a relay step without a deadline")
            return timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise late("the relay's deadline has passed")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        # The name's addresses one by one, each within what is left: given the whole
        # step's time once, `socket.create_connection` gave it to every address (a dead
        # AAAA beside the A held the relay twice its timeout; review 40).
        addresses = self._addresses(host, port, timeout)
        failure: Exception = httpcore.ConnectError(f"{host!r} has no address")
        for index, (*_, address) in enumerate(addresses):
            cut = self.cut(timeout, httpcore.ConnectTimeout)
            # Each address but the last gets its share of what is left, never all of
            # it: a first address that never answers (a dead AAAA) took the whole
            # deadline, and the live one after it was never tried (review 42).
            cut /= len(addresses) - index
            try:
                stream = self._backend.connect_tcp(
                    str(address[0]), int(address[1]), cut, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            return _DeadlineStream(stream, self)
        raise failure

    def _addresses(self, host: str, port: int, timeout: float | None) -> list[Any]:
        """`getaddrinfo` of `host`, waited for until this thread's deadline. It takes no
        timeout of its own, and a resolver that does not answer held the relay for its
        retries (resolv.conf's timeout times attempts, per name server) past the route's
        `timeout_seconds` (review 40). The lookup runs in a daemon thread of its own,
        left to finish when the relay gives up on it; at most `MAX_LOOKUPS` run at once,
        so a hung resolver costs threads up to that, never relays. Relays to a name
        whose lookup is under way wait for that one, never start another: one route's
        hung name took every lookup place relay by relay, and every other route's
        relays then timed out waiting for one (the attack review)."""
        key = (host, port)
        with self._pending_lock:
            lookup = self._pending.get(key)
            starts = lookup is None
            if lookup is None:
                lookup = self._pending[key] = _Lookup()
        if starts:
            self._start_lookup(key, lookup, timeout)
        if not lookup.done.wait(self.cut(timeout, httpcore.ConnectTimeout)):
            raise httpcore.ConnectTimeout(f"the lookup of {host!r} outlasted the relay")
        result = lookup.result
        if isinstance(result, OSError):
            raise httpcore.ConnectError(str(result)) from result
        if isinstance(result, Exception):
            raise result
        return list(result)

    def _start_lookup(self, key: tuple[str, int], lookup: _Lookup, timeout: float | None) -> None:
        host, port = key

        def finish(result: list[Any] | Exception) -> None:
            with self._pending_lock:
                if self._pending.get(key) is lookup:
                    del self._pending[key]  # the next relay to the name looks it up again
            lookup.result = result
            lookup.done.set()

        try:
            started = self._lookups.acquire(timeout=self.cut(timeout, httpcore.ConnectTimeout))
        except httpcore.ConnectTimeout as late:
            finish(late)
            raise
        if not started:
            finish(httpcore.ConnectTimeout(f"no lookup of {host!r} could start in time"))
            return

        def run() -> None:
            try:
                found: list[Any] | Exception = list(
                    self._resolve(host, port, type=socket.SOCK_STREAM)
                )
            except Exception as exc:  # noqa: BLE001 - handed to the relays' threads
                found = exc
            finally:
                self._lookups.release()
            finish(found)

        threading.Thread(target=run, name="cofre-relay-lookup", daemon=True).start()

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:  # pragma: no cover - routes are https URLs
        raise httpcore.ConnectError("a relay goes to an https URL, not a Unix socket")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class RelayClient:
    """HTTP clients per route (kept for connection reuse), the call itself, and each
    route's count of relays in flight (`slot`)."""

    def __init__(self) -> None:
        self._clients: dict[str, _Pooled] = {}
        self._retired: list[_Pooled] = []  # replaced, closed when their last relay ends
        self._lock = threading.Lock()
        self._backend = _DeadlineBackend()
        self._in_flight: dict[str, int] = {}
        self._held_by: dict[tuple[str, str], int] = {}  # (route, identity) -> places held
        # The route names of the policy last reloaded (`retire_stale`; None: none yet).
        self._in_force: frozenset[str] | None = None

    @contextlib.contextmanager
    def slot(self, name: str, route: RelayRoute, identity: str) -> Iterator[None]:
        """Hold one of the route's `max_in_flight` places for a relay of `identity`, or
        raise `UpstreamBusy` at once when this process has that many relays to the
        route under way, or `identity` its share of them (`RelayRoute.share_of`).
        Review 37: every route shared one pool of relay threads, so an upstream that
        answers slowly (or not at all, up to its timeout) took them all, and every other
        route's relays waited behind it; now it takes its own places only. Review 40:
        one identity could take all of a route's places from the others."""
        mine = (name, identity)
        with self._lock:
            held = self._in_flight.get(name, 0)
            if held >= route.max_in_flight:
                raise UpstreamBusy(
                    f"route {name!r} has {route.max_in_flight} relays waiting on its "
                    "upstream already",
                    retry_after=1.0,
                )
            share = route.share_of()
            if self._held_by.get(mine, 0) >= share:
                raise UpstreamBusy(
                    f"this identity has {share} relays waiting on route {name!r}'s "
                    "upstream already, its share of the route's places",
                    retry_after=1.0,
                )
            self._in_flight[name] = held + 1
            self._held_by[mine] = self._held_by.get(mine, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[name] -= 1
                self._held_by[mine] -= 1
                if not self._held_by[mine]:
                    del self._held_by[mine]  # identities come and go: no entry left behind

    @contextlib.contextmanager
    def _client(self, name: str, route: RelayRoute) -> Iterator[httpx.Client]:
        """The route's client, built for the route as it stands (`_trust_of`), held for
        the block. Review 34: built once per route name, a route's TLS trust was read at
        its first relay and kept: a policy reload that changed its `ca_bundle`, or a
        bundle replaced in place, was never in force, and the card kept going to an
        upstream the policy no longer trusted. A client whose route changed is closed
        once its last relay is done (closed under a relay, it would cut that relay)."""
        trust = _trust_of(route)
        with self._lock:
            pooled = self._clients.get(name)
            if pooled is None or pooled.trust != trust:
                if pooled is not None:
                    self._retire(self._clients.pop(name))
                pooled = self._clients[name] = _Pooled(_new_client(route, self._backend), trust)
            pooled.users += 1
        try:
            yield pooled.client
        finally:
            with self._lock:
                pooled.users -= 1
                # Review 35b: a relay the old policy allowed that took its route's client
                # after a reload removed the route built one `retire_stale` never saw.
                removed = self._in_force is not None and name not in self._in_force
                if removed and self._clients.get(name) is pooled:
                    self._retire(self._clients.pop(name))
                if pooled.retired and not pooled.users and pooled in self._retired:
                    self._retired.remove(pooled)
                    pooled.client.close()

    def _retire(self, pooled: _Pooled) -> None:
        """Close `pooled` now if no relay uses it, else when its last one is done (or
        at `close`). Called with the lock held, `pooled` out of the route's place (left
        there, a failed rebuild handed it closed to later relays; review 34b)."""
        pooled.retired = True
        if pooled.users:
            self._retired.append(pooled)
        else:
            pooled.client.close()

    def retire_stale(self, routes: Mapping[str, RelayRoute]) -> None:
        """Retire (`_retire`) the client of each route `routes` (the policy now in force)
        no longer has, or has with another trust (`_trust_of`). Review 35: only a
        route's next relay retired its client, and a route a reload removed has none,
        so its connections to an upstream the policy no longer names stayed open until
        the vault stopped."""
        with self._lock:
            built = dict(self._clients)
        # Outside the lock: `_trust_of` reads the bundle files' `stat`.
        stale = {
            name: pooled
            for name, pooled in built.items()
            if name not in routes or _trust_of(routes[name]) != pooled.trust
        }
        with self._lock:
            self._in_force = frozenset(routes)
            for name, pooled in stale.items():
                # A relay may have replaced it meanwhile: only the client judged goes.
                if self._clients.get(name) is pooled:
                    self._retire(self._clients.pop(name))

    def send(self, name: str, route: RelayRoute, body: Any) -> RelayResult:
        """Send `body` (with PANs) to the route's upstream; return its status and body.

        The whole call, retries and the answer's last byte included, takes at most the
        route's `timeout_seconds`; an answer is read up to `vault._relay_answer.MAX_ANSWER_BYTES`.

        Raises `UpstreamTimeout` or `UpstreamUnavailable` (after the allowed retries).
        """
        attempts = 1 + route.retries
        deadline = time.monotonic() + route.timeout_seconds
        late = UpstreamTimeout(
            f"the upstream of route {name!r} did not answer within {route.timeout_seconds:g}s"
        )
        with self._client(name, route) as client, self._backend.until(deadline):
            for attempt in range(1, attempts + 1):
                try:
                    with client.stream(route.method, route.upstream, json=body) as response:
                        # A server error's body is never used (retried, or refused by
                        # its status): not read, so it cannot end the relay before its
                        # retry (review 42).
                        failed = response.status_code >= 500
                        content = b"" if failed else read_answer(name, response)
                        _drop_if_more_came(client, response)
                except httpx.TimeoutException:
                    if attempt == attempts or time.monotonic() >= deadline:
                        raise late from None
                    continue
                except httpx.HTTPError as exc:
                    if time.monotonic() >= deadline:
                        raise late from None
                    if attempt == attempts:
                        raise UpstreamUnavailable(
                            f"the upstream of route {name!r} is unreachable ({type(exc).__name__})"
                        ) from None
                    continue
                except RuntimeError:
                    # httpx's "client has been closed": the vault closed its clients while
                    # stopping. The card may have gone: raised as the vault's own error, so
                    # the relay's outcome entry is written (review 37: none was).
                    raise UpstreamUnavailable(
                        f"the relay of route {name!r} was cut as the vault stopped: the "
                        "upstream's answer is unknown"
                    ) from None
                if response.status_code >= 500:
                    if attempt < attempts and time.monotonic() < deadline:
                        continue
                    raise UpstreamUnavailable(
                        f"the upstream of route {name!r} answered {response.status_code}"
                    )
                return RelayResult(response.status_code, answer_of(name, content))
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            # Replaced clients a relay still holds too: `close` is the vault stopping.
            for pooled in [*self._clients.values(), *self._retired]:
                pooled.client.close()
            self._clients.clear()


@dataclass
class _Pooled:
    """A route's client, the trust it was built with (`_trust_of`), the relays using it
    and whether a newer one replaced it."""

    client: httpx.Client
    trust: tuple[Any, ...]
    users: int = 0
    retired: bool = False


def _trust_of(route: RelayRoute) -> tuple[Any, ...]:
    """What a route's client is built from: its CA bundle, the bundle file as it is on
    disk now (a `stat` per relay; replaced in place, it is read again) and its step
    timeout. A bundle that cannot be read is built from, and fails, closed. Its change
    time too: a bundle rewritten in place at its old size with its modification time
    kept (``cp -p``, ``touch -r``) looked unchanged, and the card went on over the old
    trust (review 35); no user tool sets the change time."""
    signature: tuple[int, ...] | None = None
    if route.ca_bundle:
        with contextlib.suppress(OSError):
            found = os.stat(route.ca_bundle)
            signature = (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)
            signature += (found.st_ctime_ns,)
    return (route.ca_bundle, signature, route.timeout_seconds)


def _new_client(route: RelayRoute, backend: _DeadlineBackend) -> httpx.Client:
    """A client for `route`: TLS verified against its `ca_bundle`, else certifi's public
    CAs, never a CA file the environment names (`SSL_CERT_FILE`, `SSL_CERT_DIR`; review
    34: an egress proxy's interception CA set there for other tools got the card), its
    TLS secrets never in `SSLKEYLOGFILE`'s file (both contexts honour it: with a capture
    of the egress, it read the card; review 34b). An egress proxy from `HTTPS_PROXY` is
    still used: the TLS to the upstream runs through its tunnel, verified as above."""
    client = httpx.Client(
        # Review 35: `cofre.tls`'s context, which never opens SSLKEYLOGFILE's file at
        # all (review 34b's turned the key log off after `ssl` had opened it).
        verify=client_context(route.ca_bundle or None),
        timeout=route.timeout_seconds,
        follow_redirects=False,
        # Plain bytes: a compressed answer is read whole when decoded.
        headers={"accept-encoding": "identity"},
    )
    _bound_by(client, backend)
    return client


def _drop_if_more_came(client: httpx.Client, response: httpx.Response) -> None:
    """Have `client` never reuse the connection `response` came on when the upstream
    sent bytes past its end (read with it, they wait in h11's buffer). Review 34: they
    were parsed as the answer to the route's next relay, another caller's, which then
    got what the upstream made of this relay's request (an echo of this card's code
    and name, which the vault withholds only from this relay's answer). When httpx's
    pool cannot be read to tell, the connection is dropped all the same."""
    found = response.extensions.get("network_stream")
    if not isinstance(found, _DeadlineStream):
        return
    stream: _DeadlineStream = found
    for pool in _pools(client):
        for connection in list(getattr(pool, "connections", ())):
            http11 = getattr(connection, "_connection", None)
            if getattr(http11, "_network_stream", None) is stream:
                pending = getattr(getattr(http11, "_h11_state", None), "trailing_data", None)
                if isinstance(pending, tuple) and pending[0] == b"":
                    return
    stream.spent = True


def _pools(client: httpx.Client) -> list[Any]:
    """The connection pools of `client`'s transports (its own, and a proxy's)."""
    transports = [client._transport, *client._mounts.values()]
    return [getattr(transport, "_pool", None) for transport in transports if transport]


def _bound_by(client: httpx.Client, backend: _DeadlineBackend) -> None:
    """Have every connection pool of `client` (its own, and a proxy's from the
    environment, `HTTPS_PROXY`) open its connections through `backend`. httpx has no
    public way to give a pool a network backend; a version that moved it is refused
    here, before anything is sent, rather than relaying without a deadline."""
    for pool in _pools(client):
        if not hasattr(pool, "_network_backend"):
            raise UpstreamUnavailable("this httpx cannot bound a relay by its deadline")
        pool._network_backend = backend
