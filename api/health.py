"""The plain-HTTP health listener: ``/livez`` and ``/readyz`` on a port of their own.

IN PCI SCOPE (it runs in the vault process), but it serves no card data and needs no
identity: Kubernetes' kubelet cannot present a client certificate, so the probes cannot
reach the mTLS listener's health routes. Nothing else is routed here, no request body
is read, and a check answers with its stable code only (never its message: a passing
check's text may name a witness's internal address, review 34), so an unauthenticated
caller learns which subsystem is down and nothing more.

Anyone who can reach the port can open connections (review 34: 40 idle ones, sending
nothing, filled uvicorn's concurrency limit of 32 and the probes got 503, so the pod was
taken out of service, then restarted). A connection must send its request head within
`HEAD_SECONDS` (`api.connections`), and `/readyz` runs its checks (HSM key listing,
database reads) at most once per `READY_CACHE_SECONDS`, however many probes arrive: a
flood of probes costs the serving worker next to nothing. Its connections are capped
since session 39, in all and per client address, as shares of the process's soft
limit of open files (`api._descriptor_bounds.health_bounds`), and so is its queue of
connections not yet accepted: uncapped, a flood of idle connections took the
descriptors the mTLS listener, the database pool and the HSM share. Past a cap a
connection is closed as it opens, so idle connections cannot fill a queue the probes
wait in (uvicorn's concurrency limit answered them 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from api._descriptor_bounds import health_bounds
from api._uvicorn_config import listener_config
from api.connections import guarded_protocol
from api.lifecycle import ManagedServer, Readiness, bind_reuse_port
from cofre.errors import CofreError

# A probe sends its whole request at once.
HEAD_SECONDS: Final = 2.0
# How long one run of the readiness checks answers every probe.
READY_CACHE_SECONDS: Final = 1.0
# The mTLS listener's `/readyz` (`ReadyProbes`): the probes each certificate has run
# the checks for it, then how many a second; how many certificates are remembered.
PROBE_BURST: Final = 10
PROBE_PER_SECOND: Final = 1.0
PROBE_CALLERS: Final = 4096
# The readiness checks that inform without failing readiness: "ok", or what fails (the
# node still serves). A ready node's answer here shows every check as "ok" and names
# these when they fail (session 34): without the names, nothing on this port told the
# on-call engineer of a stalled audit queue or a failing purge.
INFORMATIONAL_CHECKS: Final = frozenset(
    {
        "audit_sequencer",
        "key_cryptoperiods",
        "audit_witnesses",
        "token_purge",
        "key_rotation",
        # A registered key missing from the token past the key availability timeout
        # (`vault.key_presence.KEY_PRESENCE_CHECK`, session 41).
        "hsm_key_presence",
    }
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class HealthApp:
    """A minimal ASGI app: GET/HEAD ``/livez`` (the event loop answers) and ``/readyz``
    (not draining, and `check_ready` passes: HSM, database, audit sequencer). A ready
    answer names the failing `INFORMATIONAL_CHECKS` in ``informational_failing``."""

    def __init__(
        self,
        check_ready: Callable[[], dict[str, str]],
        readiness: Readiness,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check_ready = check_ready
        self._readiness = readiness
        self._clock = clock
        # The last run of the checks (its time and answer), or the one under way.
        self._last: tuple[float, tuple[int, dict[str, Any]]] | None = None
        self._running: asyncio.Future[tuple[int, dict[str, Any]]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path not in ("/livez", "/readyz"):
            await _answer(send, 404, {"status": "not_found"}, method)
        elif method not in ("GET", "HEAD"):
            await _answer(send, 405, {"status": "method_not_allowed"}, method)
        elif path == "/livez":
            await _answer(send, 200, {"status": "alive"}, method)
        else:
            status, body = await self._ready()
            await _answer(send, status, body, method)

    async def _ready(self) -> tuple[int, dict[str, Any]]:
        if self._readiness.draining:
            return 503, {"status": "draining"}
        if self._last is not None and self._clock() - self._last[0] < READY_CACHE_SECONDS:
            return self._last[1]
        if self._running is None:  # the probes that arrive meanwhile share this run
            self._running = asyncio.ensure_future(self._run_checks())
        running = self._running
        try:
            return await asyncio.shield(running)
        finally:
            if self._running is running and running.done():
                self._running = None

    async def _run_checks(self) -> tuple[int, dict[str, Any]]:
        started = self._clock()
        try:
            checks = await in_daemon_thread(self._check_ready)
        except CofreError as exc:
            answer: tuple[int, dict[str, Any]] = (503, {"status": "unready", "code": exc.code})
        else:
            failing = informational_failing(checks)
            answer = (
                200,
                {
                    "status": "ready",
                    # A word a check, never its text (an internal address, a key's
                    # label): "failing" for an informational check that is, else "ok"
                    # (a passing check may say more than "ok": "2 of 2 ready"). Until
                    # session 46 every check read "ok" here, a failing informational
                    # one too, beside its name in ``informational_failing``: an on-call
                    # engineer reading the map was told a lagging witness was fine.
                    "checks": {name: "failing" if name in failing else "ok" for name in checks},
                    # Names only, as for a failing check (its text is not for this port).
                    "informational_failing": failing,
                },
            )
        self._last = (started, answer)
        return answer


async def in_daemon_thread(check: Callable[[], dict[str, str]]) -> dict[str, str]:
    """`check()` run in a daemon thread of its own (in a copy of this context): return or
    raise what it does. Not the loop's default executor (review 36): a check waiting on
    a database that does not answer held one of its threads, and `asyncio.run` waits for
    every one of them when the loop ends, so the stop never reached the key wipe."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[dict[str, str]] = loop.create_future()

    def settle(result: dict[str, str] | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result or {})

    def run() -> None:
        try:
            result, error = check(), None
        except BaseException as exc:  # noqa: BLE001 - raised in the waiting probe
            result, error = None, exc
        # RuntimeError: the loop has ended (the process stops), nobody waits for this.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    context = contextvars.copy_context()
    threading.Thread(
        target=context.run, args=(run,), name="cofre-readiness-check", daemon=True
    ).start()
    return await future


def informational_failing(checks: dict[str, str]) -> list[str]:
    """The names, sorted, of the `INFORMATIONAL_CHECKS` in `checks` that are not "ok"."""
    return sorted(n for n, note in checks.items() if n in INFORMATIONAL_CHECKS and note != "ok")


async def _answer(send: Send, status: int, body: dict[str, Any], method: str) -> None:
    payload = json.dumps(body, sort_keys=True).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else payload})


# A run of the readiness checks: its answer, or the error of the first failing one.
_Result = dict[str, str] | CofreError


class ReadyProbes:
    """The mTLS listener's `/readyz`: runs of `check` (every readiness check) metered per
    client certificate, and shared.

    That route has no identity, no policy, no refusal bucket and no audit entry (its
    callers are load balancers), so until review 29 any certificate the CA issued, one
    whose identity the policy does not know too, could run the checks (an HSM call on
    the token's session, database reads, the key registry's HSM key listing) as often
    as it could send, unmetered and unrecorded. Now each certificate runs them itself
    for `PROBE_BURST` probes, then `PROBE_PER_SECOND`; its other probes are answered
    with the newest run's answer (whosever it was) while that run began at most
    `READY_CACHE_SECONDS` ago, and otherwise share a run as `HealthApp`'s probes do:
    the run under way, or one they start (so their runs are at most one per
    `READY_CACHE_SECONDS`, however many certificates send them). A probe at a prober's
    pace is always answered from a run of its own or one under way, so a failure shows
    at once; any answer is at most `READY_CACHE_SECONDS` older than its probe, or comes
    from a run under way when the probe came. Until review 29b a metered probe got the
    newest answer however old, without waiting for a slow run (a database past its pool
    timeout, an HSM that does not answer): the "ready" of before the failure, for as
    long as that run took. The probes wait for a run on the event loop (the run alone
    holds a thread): a probe with an allowance used to wait for the run under way in
    the worker's thread pool, so one certificate's burst held 10 of its 40 threads for
    as long as a run was slow. Callers are keyed by certificate, not identity, so each
    of an identity's certificates has its own allowance: `PROBE_CALLERS` are
    remembered, the least recently seen forgotten first."""

    def __init__(
        self, check: Callable[[], dict[str, str]], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._check = check
        self.clock = clock
        self._lock = threading.Lock()  # the allowances (one loop per worker; tests may have more)
        self._allowances: OrderedDict[str, tuple[float, float]] = OrderedDict()
        # The newest run's answer and when it began; the run under way, with its loop.
        self._last: tuple[float, dict[str, str] | CofreError] | None = None
        self._running: tuple[asyncio.AbstractEventLoop, asyncio.Future[_Result]] | None = None

    async def answer(self, certificate: str | None) -> dict[str, str]:
        """The checks' answer for a probe over a connection of `certificate` (its PEM);
        raises the `CofreError` of the first failing check."""
        with self._lock:
            own = self._spend(hashlib.sha256((certificate or "").encode()).hexdigest())
        last = self._last
        if not own and last is not None and self.clock() - last[0] < READY_CACHE_SECONDS:
            return _answered(last[1])
        loop = asyncio.get_running_loop()
        running = self._running
        if running is None or running[0] is not loop or running[1].done():
            running = self._running = (loop, asyncio.ensure_future(self._run()))
        try:
            return _answered(await asyncio.shield(running[1]))
        finally:
            if self._running is running and running[1].done():
                self._running = None

    async def _run(self) -> _Result:
        """One run of the checks, in a thread; its answer becomes the newest."""
        started = self.clock()
        result: _Result
        try:
            result = await in_daemon_thread(self._check)
        except CofreError as exc:
            result = exc
        self._last = (started, result)
        return result

    def _spend(self, key: str) -> bool:
        """Whether the certificate `key` may have a run of its own now (spends it)."""
        now = self.clock()
        tokens, at = self._allowances.pop(key, (float(PROBE_BURST), now))
        tokens = min(float(PROBE_BURST), tokens + max(0.0, now - at) * PROBE_PER_SECOND)
        own = tokens >= 1.0
        self._allowances[key] = (tokens - 1.0 if own else tokens, now)
        while len(self._allowances) > PROBE_CALLERS:
            self._allowances.popitem(last=False)
        return own


def _answered(result: _Result) -> dict[str, str]:
    if isinstance(result, CofreError):
        raise result.with_traceback(None)
    return dict(result)


def build_health_server(
    check_ready: Callable[[], dict[str, str]],
    readiness: Readiness,
    host: str,
    port: int,
    *,
    log_config: dict[str, Any] | None = None,
    reuse_port: bool = False,
    open_files: int | None = None,
) -> ManagedServer:
    """Return a configured (not yet started) plain-HTTP server for the probes; with
    `reuse_port`, on its own SO_REUSEPORT socket (every worker answers probes). Its
    connections are bounded by `health_bounds` of `open_files` (None: the process's
    soft limit)."""
    # No concurrency limit (`listener_config`): a queue is what idle connections filled
    # (the module text); each is closed unless its head comes in time, and one past the
    # bounds as it opens.
    total, per_address = health_bounds(open_files)
    config = listener_config(
        HealthApp(check_ready, readiness),
        host,
        port,
        log_config=log_config,
        timeout_keep_alive=5,
        # At the stop, probes still waiting for a check (a database that does not
        # answer) are cancelled after a second: they held the stop before the key wipe.
        timeout_graceful_shutdown=1,
        # A head within HEAD_SECONDS of the connection (or of the last answer); no
        # client certificates here, so the cap is per client address.
        http=guarded_protocol(
            header_timeout=HEAD_SECONDS,
            body_timeout=HEAD_SECONDS,
            max_connections_per_identity=per_address,
            by_address=True,
            max_connections=total,
        ),
    )
    # And its queue of connections not yet accepted: the loop accepts up to a backlog's
    # worth at each wake-up before any is refused (each a descriptor until then), so
    # uvicorn's 2,048 took every descriptor of a worker at 1,024 for an instant, as
    # often as a flood refilled the queue (a database connection or the HSM's files
    # failing then), and the accepting paused a second at each.
    config.backlog = total
    server = ManagedServer(config)
    if reuse_port:
        server.sockets = bind_reuse_port(host, port)
    return server
