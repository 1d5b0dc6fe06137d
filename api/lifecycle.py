"""Running the API and health listeners until a stop signal, then draining.

IN PCI SCOPE. Kubernetes stops a pod with SIGTERM; a developer with Ctrl-C (SIGINT).
Both drain the same way:

1. readiness fails at once, on the health listener and on the mTLS ``/readyz``;
2. after ``drain_delay`` seconds (while load balancers notice; 0 when a preStop hook
   already waited) the mTLS listener stops accepting, idle keep-alive connections close
   and in-flight requests get up to the server's graceful-shutdown timeout to finish;
3. the health listener stops, and the caller wipes keys and closes the HSM session,
   then the process exits 0.

A second signal during the drain forces the exit (in-flight requests are cancelled).
uvicorn's own signal handling is turned off: it re-raises the signal after shutting
down, so SIGTERM would end the process with status 143 before the keys are wiped.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import signal
import socket
import threading
from collections.abc import Callable, Generator
from ipaddress import IPv4Network, IPv6Network
from ssl import SSLContext
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

import structlog
import uvicorn

from api.accept import TLSListener, listening_sockets
from api.balance import WorkerLoads
from api.errors import ApiError
from api.handshake import HandshakeFailures, handshake_failures, observe_handshake_failures
from api.observability import Telemetry
from api.routes._offload import drain as drain_left_calls

if TYPE_CHECKING:
    from api.crl import CrlWatcher

_log = structlog.get_logger("cofre.lifecycle")
# How long a stopping worker waits for the calls of requests cancelled at the deadline
# (`api.routes._offload.drain`): their commits, then their refusals' audit entries.
LEFT_CALLS_SECONDS: Final = 10.0
# How long it waits for the requests cancelled at the deadline to answer (an audit
# entry each, then ``request_interrupted``: `_interrupted_answered`).
INTERRUPTED_SECONDS: Final = 5.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Stop and reload signals that arrived before `run_until_stopped` took them over, in
# order (`defer_signals`).
_deferred: list[signal.Signals] = []


class Readiness:
    """Whether this process should get traffic. Draining is one-way: once a stop signal
    arrived, readiness fails on every listener until the process exits."""

    def __init__(self) -> None:
        self._draining = threading.Event()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def begin_drain(self) -> None:
        self._draining.set()


class ManagedServer(uvicorn.Server):
    """A uvicorn server whose stop is decided by `run_until_stopped`, not by uvicorn's
    process-wide signal handlers."""

    # Set by `api.server.build_server` when a CRL is configured; SIGHUP reloads it.
    crl_watcher: CrlWatcher | None = None
    # Set by `api.server.build_server` for a worker of several sharing the port
    # (SO_REUSEPORT): the listening sockets it serves on instead of binding its own.
    sockets: list[socket.socket] | None = None

    # Set by `api.server.build_server` and `api.capture.build_capture_server`: how long
    # a TLS handshake may take (None: the loop's default, 60 s).
    handshake_timeout: float | None = None

    # Set by `api.capture.build_capture_server`: the TLS handshakes under way it holds at
    # once, in all and per client address (None: no bound; review 35b).
    handshake_bound: tuple[int, int] | None = None
    # Set by `api.server.build_server`: client networks held to the bound in all only,
    # not to an address's share (load balancers that terminate TCP; session 39).
    handshake_exempt: tuple[IPv4Network | IPv6Network, ...] = ()

    # Set by `api.capture.build_capture_server`: who logs and counts this server's failed
    # handshakes (None: its loop's, `api.handshake.observe_handshake_failures`).
    handshakes: HandshakeFailures | None = None

    # Set by `api.server.build_server` for a worker of several: its slot in the node's
    # requests in flight (`api.balance`), marked serving while this server listens.
    loads: WorkerLoads | None = None

    # Set by `cofre_cli.serving.serve_worker`: called once (in the loop, so it must not
    # block) when this server's listeners accept connections.
    on_started: Callable[[], object] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn creates the listening server without a handshake timeout: a peer that
        # connects and never sends a ClientHello held its socket for asyncio's default
        # 60 s, before any of the read deadlines of `api.connections` can start.
        _bound_tls_handshakes(asyncio.get_running_loop())
        token = _HANDSHAKE_TIMEOUT.set(self.handshake_timeout)
        reporter = _HANDSHAKES.set(self.handshakes)
        bound = _HANDSHAKE_BOUND.set((self.handshake_bound, self.handshake_exempt))
        try:
            await super().startup(sockets=sockets)
        finally:
            _HANDSHAKE_BOUND.reset(bound)
            _HANDSHAKES.reset(reporter)
            _HANDSHAKE_TIMEOUT.reset(token)
        if self.loads is not None and self.started:
            self.loads.listening(True)
        if self.on_started is not None and self.started:
            self.on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.loads is not None:
            self.loads.listening(False)  # the other workers stop sending it connections
        await super().shutdown(sockets=sockets)


# The handshake timeout of the server being started (a context variable: servers started
# in other tasks of the same loop each see their own).
_HANDSHAKE_TIMEOUT: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "cofre_handshake_timeout", default=None
)
# And its bound on handshakes under way, when it has one, with the networks exempt from
# an address's share.
_HANDSHAKE_BOUND: contextvars.ContextVar[
    tuple[tuple[int, int] | None, tuple[IPv4Network | IPv6Network, ...]]
] = contextvars.ContextVar("cofre_handshake_bound", default=(None, ()))
# And its reporter of failed handshakes, when it has its own.
_HANDSHAKES: contextvars.ContextVar[HandshakeFailures | None] = contextvars.ContextVar(
    "cofre_handshakes", default=None
)


def _bound_tls_handshakes(loop: asyncio.AbstractEventLoop) -> None:
    """Have `loop.create_server` serve TLS through `api.accept.TLSListener` (once per
    loop), with the starting server's `handshake_timeout`: a failed handshake is then
    reported with its peer (`api.handshake`), to the server's `handshakes` or else the
    loop's. A plain listener (health) too, since session 46: the loop's own server
    logged a traceback per accept try when out of descriptors (`api.accept`)."""
    if getattr(loop, "_cofre_handshake_bound", False):
        return

    async def create_server(
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | None = None,
        port: int | None = None,
        *,
        ssl: SSLContext | None = None,
        sock: socket.socket | None = None,
        backlog: int = 100,
        **kwargs: Any,
    ) -> Any:
        # Bound by host and port: every address of `host`, as the loop would bind them.
        owns_socket = sock is None
        bound, exempt = _HANDSHAKE_BOUND.get()
        listener = TLSListener(
            loop,
            listening_sockets(host, port or 0) if sock is None else sock,
            protocol_factory,
            ssl,
            handshake_timeout=_HANDSHAKE_TIMEOUT.get(),
            # A plain connection has no handshake to report (the health listener):
            # counted as the mTLS listener's, a failure there would mislabel its cause.
            report=(
                (_HANDSHAKES.get() or handshake_failures(loop)).report
                if ssl is not None
                else _unreported
            ),
            backlog=backlog,
            owns_socket=owns_socket,
            bound=bound,
            exempt=exempt,
        )
        listener.start()
        return listener

    loop.create_server = create_server  # type: ignore[method-assign,assignment]
    loop._cofre_handshake_bound = True  # type: ignore[attr-defined]


def _unreported(_exc: BaseException, _peer: str | None) -> None:
    """A plain listener's `report`: its connections have no TLS handshake to fail."""


def bind_reuse_port(host: str, port: int) -> list[socket.socket]:
    """Listening-ready TCP sockets on every address of `host` and `port` with
    SO_REUSEPORT (IPv6 ones IPv6-only, as the loops' own servers bind): every worker of
    one `cofre serve` binds its own, and the kernel hashes each new connection to one of
    them. (One shared socket would let whichever worker wakes first accept a whole burst
    of keep-alive connections, and keep them.) Only processes of the same user may join
    the port. Raises `ApiError` when one cannot be bound."""
    try:
        return listening_sockets(host, port, reuse_port=True)
    except OSError as exc:
        raise ApiError(f"cannot listen on {host}:{port} ({exc.strerror})") from None


def claim_port(host: str, port: int) -> socket.socket:
    """Hold the claim of one `cofre serve` on `host`:`port` (keep the socket open while
    serving; the kernel drops it when the process ends, however it ends). Workers bind
    with SO_REUSEPORT, so a second node of the same user on the same port would start
    without "address in use" and the kernel would split connections between two vaults
    (review 34: 40 tokens, 20 in each store). The claim is an abstract Unix socket named
    by the port: one per network namespace. Raises `ApiError` when it is held."""
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # By port alone: "localhost", "127.1" and "0.0.0.0" are other spellings of
        # addresses that share it (review 37 split connections over four vaults so).
        claim.bind(f"\0cofre-serve :{port}")
    except OSError:
        claim.close()
        raise ApiError(
            f"cannot listen on {host}:{port} (another cofre serve on this host holds the port)"
        ) from None
    return claim


def defer_signals() -> None:
    """Record SIGTERM, SIGINT and SIGHUP from now until `run_until_stopped` takes them
    over, then unblock them (a worker is started with them blocked,
    `cofre_cli.workers`): a stop that arrives while the process builds its runtime is
    acted on once it would serve (it stops without serving), a reload is done then.
    Their default action would have killed the process half-started (review 34). A
    second stop signal before then ends the process at once, as during the drain."""

    def record(signum: int, _frame: FrameType | None) -> None:
        if signum in STOP_SIGNALS and any(early in STOP_SIGNALS for early in _deferred):
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        _deferred.append(signal.Signals(signum))

    for signum in _HELD_SIGNALS:
        signal.signal(signum, record)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_SIGNALS)


_HELD_SIGNALS: Final = (*STOP_SIGNALS, signal.SIGHUP)


def run_until_stopped(
    api: ManagedServer,
    health: ManagedServer | None,
    readiness: Readiness,
    *,
    drain_delay: float = 0.0,
    on_reload: Callable[[], object] | None = None,
    telemetry: Telemetry | None = None,
    on_loop: Callable[[asyncio.AbstractEventLoop], object] | None = None,
) -> None:
    """Serve `api` (and `health`) in this thread until SIGTERM or SIGINT, then drain.
    SIGHUP calls `on_reload` (in a worker thread; a failure is logged, the process
    keeps serving what it had). Failed TLS handshakes are logged and counted into
    `telemetry` (`api.handshake`). `on_loop` is called with the event loop that serves
    both listeners before they start (a worker's node readiness proves it runs).

    Returns once both servers have stopped and the calls of requests cancelled at the
    deadline are finished (their refusals audited; at most `LEFT_CALLS_SECONDS`); the
    caller then releases the runtime.
    """
    try:
        asyncio.run(
            _serve(
                api,
                health,
                readiness,
                drain_delay=drain_delay,
                on_reload=on_reload,
                telemetry=telemetry,
                on_loop=on_loop,
            )
        )
    finally:
        drain_left_calls(LEFT_CALLS_SECONDS)


async def _serve(
    api: ManagedServer,
    health: ManagedServer | None,
    readiness: Readiness,
    *,
    drain_delay: float,
    on_reload: Callable[[], object] | None = None,
    telemetry: Telemetry | None = None,
    on_loop: Callable[[asyncio.AbstractEventLoop], object] | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    if on_loop is not None:
        on_loop(loop)
    observe_handshake_failures(loop, telemetry)
    reload_tasks: set[asyncio.Task[None]] = set()

    async def reload(callback: Callable[[], object]) -> None:
        try:
            await asyncio.to_thread(callback)
        except Exception as exc:  # noqa: BLE001 - a bad reload must not stop the vault
            _log.error("reload failed", error=type(exc).__name__, detail=str(exc))

    def on_hangup(callback: Callable[[], object]) -> None:
        task = loop.create_task(reload(callback))
        reload_tasks.add(task)
        task.add_done_callback(reload_tasks.discard)

    drain_tasks: set[asyncio.Task[None]] = set()

    async def drain(signame: str) -> None:
        _log.info("draining", signal=signame, delay_seconds=drain_delay)
        if drain_delay > 0:
            await asyncio.sleep(drain_delay)
        api.should_exit = True

    def on_signal(signum: signal.Signals) -> None:
        if readiness.draining:
            _log.warning("forced stop: second signal during the drain", signal=signum.name)
            api.force_exit = True
            api.should_exit = True
            return
        readiness.begin_drain()
        task = loop.create_task(drain(signum.name))
        drain_tasks.add(task)
        task.add_done_callback(drain_tasks.discard)

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    if on_reload is not None:
        loop.add_signal_handler(signal.SIGHUP, on_hangup, on_reload)
    stopped_early = _replay_deferred(on_hangup, on_reload)
    health_task = (
        loop.create_task(health.serve(sockets=health.sockets))
        if health is not None and not stopped_early
        else None
    )
    try:
        if not stopped_early:
            await api.serve(sockets=api.sockets)
            await _interrupted_answered(api)
    finally:
        readiness.begin_drain()
        if health is not None and health_task is not None:
            health.should_exit = True
            await health_task
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
        if on_reload is not None:
            loop.remove_signal_handler(signal.SIGHUP)
        # The drain goes on (calls left, relays, the capture listener, the key wipe):
        # a reload asked now is ignored, not SIGHUP's default action, which killed the
        # worker half-drained (review 37).
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if api.crl_watcher is not None:
            api.crl_watcher.stop()


async def _interrupted_answered(api: ManagedServer) -> None:
    """Wait (at most `INTERRUPTED_SECONDS`) for the requests uvicorn cancelled at the
    drain deadline to send their ``request_interrupted`` answers (`api.guard`: each
    writes its audit entry first). `asyncio.run` cancels what is left when `_serve`
    returns, and a request cancelled again there got uvicorn's plain-text 500."""
    if api.server_state.tasks and not api.force_exit:
        await asyncio.wait(set(api.server_state.tasks), timeout=INTERRUPTED_SECONDS)
    _log.info("api listener stopped", forced=api.force_exit)


def _replay_deferred(
    on_hangup: Callable[[Callable[[], object]], None], on_reload: Callable[[], object] | None
) -> bool:
    """Act on the signals `defer_signals` recorded (the loop's handlers now take new
    ones): returns whether a stop arrived (the process then stops without serving);
    else a reload asked meanwhile is done now (what start-up read may predate it)."""
    deferred = list(_deferred)
    _deferred.clear()
    stops = [signum.name for signum in deferred if signum in STOP_SIGNALS]
    if stops:
        _log.info("stop asked during start: stopping without serving", signal=stops[0])
        return True
    if signal.SIGHUP in deferred:
        _log.info("reload asked during start: reloading now", signal="SIGHUP")
        if on_reload is not None:
            on_hangup(on_reload)
    return False
