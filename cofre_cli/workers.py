"""`cofre serve` with several worker processes sharing the mTLS port.

IN PCI SCOPE (wiring). A Python process handles TLS, HTTP, the app and the vault's
work under one GIL, so it uses one core however many the node has (issue 21: the GIL
was the ceiling long before the database). `cofre serve` therefore runs
``server.workers`` processes (default: one per core). Each is a fresh interpreter
(multiprocessing ``spawn``: no HSM session, database connection, lock or thread crosses
a fork) that builds its own runtime: HSM sessions, database pool, group committer, audit
sequencer thread and purge worker, and listens on its own SO_REUSEPORT socket
(`api.lifecycle.bind_reuse_port`). What must happen one at a time still does, across
workers exactly as across nodes: on PostgreSQL a transaction-scoped advisory lock
elects the one sequencer and the one purger; on SQLite every writer holds the
database's write lock (``BEGIN IMMEDIATE``), so a second sequencer finds nothing left
to integrate.

This process, the supervisor, holds no key, opens no session and serves nothing. It
forwards SIGTERM and SIGINT (each worker drains as a single process does; a second
signal forces) and SIGHUP (reload) to every worker. A stop that arrives while it is
still starting workers starts no more and reaches every worker started; a worker
holds the signals it gets before it serves (`api.lifecycle.defer_signals`): a stop
then ends it without serving, a reload is done once it serves. A worker that ends on
its own stops the others and the supervisor exits with its status: the orchestrator
restarts the node whole rather than leave it running short.

Readiness is the node's, not one worker's (`NodeReadiness`): a probe on the shared
health port reaches whichever worker the kernel picks, so each worker answers ready only
while every worker has stamped a passing check in the supervisor's shared array within
the last few seconds (a worker stamps only while its event loop runs). Otherwise a pod
whose second worker is still opening its HSM session, or is stuck, would be marked
ready and half its connections answered 503.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import FrameType
from typing import Final, Protocol

import structlog

from api.balance import Counts, node_counts
from api.errors import Draining, WorkerUnready
from api.lifecycle import defer_signals
from cofre.background import LoopHealth
from cofre.settings import Settings
from cofre_cli._parent import die_with
from cofre_cli._ready_signal import supervisor_announcer
from cofre_cli.stopping import leave_process

_log = structlog.get_logger("cofre.workers")
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max ..."
# cgroup v1 (still the default of some node images): cpu.cfs_quota_us ("-1": no limit)
# and cpu.cfs_period_us in the cpu controller's directory.
_CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
# Each worker runs its own readiness check this often, and a worker whose last passing
# check is older than STALE_SECONDS makes the whole node unready. The probe in
# deploy/k8s looks every 5 s and acts on two failures, so a stuck worker takes the pod
# out of service within ~15 s, and a slow check (an HSM round trip) never flaps it.
# Not every second: a check lists the token's keys (the key registry's 1 s cache has
# expired by then), 2-5 ms on SoftHSM's one session and a round trip per key attribute
# on CloudHSM (review 16), so two beats fit in the stale time and cost half as much.
BEAT_SECONDS: Final = 2.0
STALE_SECONDS: Final = 5.0


class Stamps(Protocol):
    """The supervisor's shared array (`multiprocessing.RawArray` of doubles): worker
    N's slot holds the `time.monotonic()` of its last passing check, 0.0 for none.
    CLOCK_MONOTONIC is one clock for every process of the machine."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int, /) -> float: ...
    def __setitem__(self, index: int, value: float, /) -> None: ...


class NodeReadiness:
    """Worker `index`'s readiness check made the node's: its own `check` must pass, and
    every other worker's stamp must be fresh. `beat` (every BEAT_SECONDS, from the
    thread `start` runs) keeps this worker's stamp fresh whether or not probes reach it;
    any failing check clears the stamp at once, so a worker that is draining, has lost
    its HSM session or its database makes the node unready on every worker. With
    `serving_loop`, the beat stamps only while the event loop given to `attach` runs
    callbacks: a worker whose loop is blocked answers none of its connections (the mTLS
    and health listeners share it), however well its checks pass in the beat's thread.

    The beat logs, once per change: this worker's check failing and why, and recovering
    (`cofre.background.LoopHealth`, loop ``node readiness``, as every background loop
    does), and another worker that was ready going late (a stuck worker cannot say so
    itself). An unready pod gets no traffic, so nothing else would."""

    def __init__(
        self,
        stamps: Stamps,
        index: int,
        check: Callable[[], dict[str, str]],
        *,
        stale_after: float = STALE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        serving_loop: bool = False,
    ) -> None:
        self._stamps = stamps
        self._index = index
        self._check = check
        self._stale_after = stale_after
        self._clock = clock
        self._needs_loop = serving_loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._halted = threading.Event()
        self._wake = threading.Event()
        # The probe's thread and the beat's check at once: the stamp shows the outcome
        # of the check that started last (a pass begun before a failure is old news).
        self._lock = threading.Lock()
        self._decided = -math.inf
        # The beat's own (one thread): what it last logged.
        self._health = LoopHealth("node readiness")
        self._seen_ready: set[int] = set()
        self._reported_late: list[int] = []

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop that serves this worker's listeners (`serving_loop`); the beat
        runs at once rather than at its next tick."""
        self._loop = loop
        self._wake.set()

    def check(self) -> dict[str, str]:
        """This worker's checks plus ``workers: "N of N ready"``; raises this worker's
        own failure, else `WorkerUnready` naming the workers whose stamps are stale."""
        checks = self._stamped_check()
        late = self._late(self._clock())
        if late:
            raise WorkerUnready(
                f"worker(s) {late} of this node have not passed a readiness check in the "
                f"last {self._stale_after:g} s"
            )
        count = len(self._stamps)
        checks["workers"] = f"{count} of {count} ready"
        return checks

    def beat(self) -> None:
        """Run this worker's check to refresh (or clear) its stamp; never raises."""
        if self._needs_loop and self._loop is None:
            self._stamp(self._clock(), 0.0)  # not serving yet: starting, not failing
            return
        try:
            self._stamped_check(self._serving if self._needs_loop else None)
        except Draining:
            return  # a stop signal: the lifecycle logs it, and every worker stops
        except Exception as exc:  # noqa: BLE001 - a broken check must not end the beat
            self._health.failed(exc)
        else:
            self._health.succeeded()
        self._note_late(self._late(self._clock()))

    def start(self, every: float = BEAT_SECONDS) -> Callable[[], None]:
        """Beat now and then every `every` seconds on a daemon thread (in this thread's
        context: its log lines carry the worker's index); returns the function that stops
        it (and clears the stamp: a stopping worker is unready)."""

        def loop() -> None:
            while not self._halted.is_set():
                self.beat()
                self._wake.wait(every)
                self._wake.clear()

        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run, args=(loop,), name="cofre-node-readiness", daemon=True
        )
        thread.start()

        def halt() -> None:
            self._halted.set()
            self._wake.set()
            # Not joined (review 36): a beat waiting on a database that does not answer
            # held the stop here for 7 s of its deadline. A check still running when
            # this returns stamps nothing (`_decided`), and its thread is a daemon.
            with self._lock:
                self._decided = math.inf  # a check still running stamps nothing
                self._stamps[self._index] = 0.0

        return halt

    def _stamped_check(self, then: Callable[[], None] | None = None) -> dict[str, str]:
        started = self._clock()
        try:
            checks = self._check()  # first: a draining worker stops here, unlogged
            if then is not None:
                then()
        except BaseException:
            self._stamp(started, 0.0)
            raise
        self._stamp(started, self._clock())
        return checks

    def _stamp(self, started: float, value: float) -> None:
        with self._lock:
            if started < self._decided:
                return
            self._decided = started
            self._stamps[self._index] = value

    def _serving(self) -> None:
        """Return once the attached event loop has run a callback; raise `WorkerUnready`
        when it does not within the stale time (blocked) or has stopped."""
        loop = self._loop
        turned = threading.Event()
        stopped = WorkerUnready("this worker's event loop is not running")
        if loop is None:
            raise stopped
        try:
            loop.call_soon_threadsafe(turned.set)
        except RuntimeError:  # closed
            raise stopped from None
        deadline = time.monotonic() + self._stale_after
        while not turned.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            if self._halted.is_set() or time.monotonic() >= deadline:
                raise WorkerUnready(
                    f"this worker's event loop has not run for {self._stale_after:g} s"
                )

    def _late(self, now: float) -> list[int]:
        return [
            worker
            for worker in range(len(self._stamps))
            if worker != self._index and not self._fresh(self._stamps[worker], now)
        ]

    def _fresh(self, stamp: float, now: float) -> bool:
        return stamp > 0.0 and now - stamp <= self._stale_after

    def _note_late(self, late: list[int]) -> None:
        others = set(range(len(self._stamps))) - {self._index}
        self._seen_ready |= others - set(late)
        # A worker never seen ready is starting, not late.
        reported = [worker for worker in late if worker in self._seen_ready]
        if reported == self._reported_late:
            return
        self._reported_late = reported
        if reported:
            _log.warning(
                "worker(s) of this node late",
                workers=reported,
                stale_after_seconds=self._stale_after,
            )
        else:
            _log.info("every worker of this node ready again")


def worker_count(
    settings: Settings, cgroup: Path = _CGROUP_CPU_MAX, cgroup_v1: Path = _CGROUP_V1_CPU
) -> int:
    """``server.workers``, or the CPU cores this process may run on: its affinity, capped
    by its cgroup's CPU quota (a pod limited to 2 CPUs on a 64-core host gets 2), read
    from cgroup v2's `cgroup` file, else from cgroup v1's `cgroup_v1` directory. With no
    quota (a pod with no CPU limit) that is every core of the host: set `server.workers`."""
    if settings.server.workers is not None:
        return settings.server.workers
    cores = max(1, len(os.sched_getaffinity(0)))
    try:
        quota, period = cgroup.read_text(encoding="ascii").split()[:2]
    except (OSError, ValueError):
        try:
            quota = (cgroup_v1 / "cpu.cfs_quota_us").read_text(encoding="ascii").strip()
            period = (cgroup_v1 / "cpu.cfs_period_us").read_text(encoding="ascii").strip()
        except OSError:
            return cores
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # v2's "max", or a file this code does not understand
        return cores
    if quota_us <= 0 or period_us <= 0:  # v1's "-1": no limit
        return cores
    return max(1, min(cores, math.ceil(quota_us / period_us)))


# (settings, index, stamps, loads, announce): `announce()` once the worker answers.
Target = Callable[[Settings, int, Stamps, Counts, Callable[[], None]], None]


def _worker(
    target: Target,
    settings: Settings,
    index: int,
    stamps: Stamps,
    loads: Counts,
    supervisor: int,
    ready: Connection | None = None,
) -> None:
    # First: the supervisor started this process with the stop and reload signals
    # blocked; from here they are recorded, and acted on once it serves.
    defer_signals()
    die_with(supervisor)
    # Its own process group: a terminal's Ctrl-C reaches the supervisor only, which
    # forwards one SIGTERM; two signals would force the worker out mid-request.
    os.setpgid(0, 0)
    # Called once it answers: writes `index` on the supervisor's pipe (`_ready_signal`).
    target(settings, index, stamps, loads, supervisor_announcer(ready, index))
    leave_process(0)  # no interpreter finalisation after the stop (`cofre_cli.stopping`)


def run_workers(
    settings: Settings, count: int, target: Target, *, on_ready: Callable[[], None] | None = None
) -> int:
    """Run `target(settings, index, stamps, loads, announce)` in `count` spawned
    processes until they all end; forward stop and reload signals. `stamps` is the
    node's shared readiness array (`NodeReadiness`), `loads` its requests in flight per
    worker (`api.balance`). `on_ready` is called (in this thread) once every worker has
    said it answers (by calling `announce`: `cofre_cli._ready_signal`). Returns the exit
    status for the node: 0 when every worker stopped cleanly after a stop signal, else
    the first failed worker's status."""
    context = multiprocessing.get_context("spawn")
    # Shared memory the workers inherit at spawn; no lock: each worker writes only its
    # own aligned double, and a reader needs no more than one slot's last write.
    stamps: Stamps = context.RawArray("d", count)
    loads = node_counts(context, count)
    # Every worker writes its index here once it answers (`_ready_signal`).
    heard, told_ready = context.Pipe(duplex=False)
    answering: set[int] = set()
    processes = [
        context.Process(
            target=_worker,
            args=(target, settings, i, stamps, loads, os.getpid(), told_ready),
            name=f"cofre-worker-{i}",
        )
        for i in range(count)
    ]
    stops = 0  # stop signals received (each forwarded to every worker once)
    told = [0] * count  # of them, sent to each worker so far

    def tell_workers() -> None:
        for index, process in enumerate(processes):
            while process.pid is not None and process.exitcode is None and told[index] < stops:
                told[index] += 1
                os.kill(process.pid, signal.SIGTERM)

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stops
        if signum == signal.SIGHUP:
            if stops:  # stopping: nothing to reload (review 37)
                return
            for process in processes:
                if process.pid is not None and process.exitcode is None:
                    os.kill(process.pid, signal.SIGHUP)
            return
        stops += 1
        tell_workers()

    previous = {signum: signal.signal(signum, forward) for signum in _FORWARDED}
    status = 0
    try:
        running = _start(processes, lambda: stops > 0)
        told_ready.close()  # the workers have their copies: all gone, `heard` ends
        tell_workers()  # a stop that arrived while the last one started
        listening = not heard.closed
        while running:
            wait([p.sentinel for p in running] + ([heard] if listening else []))
            if listening and heard.poll():
                listening = _heard_from(heard, answering, count, on_ready, lambda: stops > 0)
            for process in [p for p in running if p.exitcode is not None]:
                running.remove(process)
                code = process.exitcode or 0
                if code != 0 and status == 0:
                    status = code if code > 0 else 128 - code
                if not stops:
                    _log.error(
                        "a worker ended on its own: stopping the node",
                        # Not `worker`: that field names the worker that writes a line,
                        # and this one is the supervisor's (session 46's drill).
                        ended_worker=_index_of(process.name),
                        exit_code=process.exitcode,
                    )
                    status = status or 1
                    forward(signal.SIGTERM, None)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        heard.close()
    return status


def _heard_from(
    heard: Connection,
    answering: set[int],
    count: int,
    on_ready: Callable[[], None] | None,
    stopping: Callable[[], bool],
) -> bool:
    """Read one worker's "I answer" into `answering`; once all `count` have said it,
    call `on_ready` (unless the node is stopping). Returns whether to listen on."""
    try:
        answering.add(heard.recv())
    except (EOFError, OSError):
        return False  # every worker's end closed: those left never will say it
    if len(answering) < count:
        return True
    if on_ready is not None and not stopping():
        on_ready()
    return False


def _start(processes: list[SpawnProcess], stopping: Callable[[], bool]) -> list[SpawnProcess]:
    """Start `processes` in order until `stopping()`; return those started. Each starts
    with the forwarded signals blocked, here and in the child it spawns (a child
    inherits its parent's signal mask across the exec): a signal for the node waits in
    this process until the worker's pid is known, and in the worker until it has its
    handlers (`api.lifecycle.defer_signals`, `_worker`). Without, a SIGTERM or SIGHUP
    reaching a worker still importing killed it by the signal's default action (143 or
    129 for the node), and a worker started after a stop never heard of it (review 34)."""
    started: list[SpawnProcess] = []
    for process in processes:
        if stopping():
            _log.warning(
                "stop asked while the workers start: no more are started",
                started=len(started),
                workers=len(processes),
            )
            break
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        started.append(process)
    else:
        _log.info("workers started", workers=len(processes), pids=[p.pid for p in processes])
    return started


def _index_of(name: str | None) -> int | str | None:
    """The worker index in a worker process's name (``cofre-worker-N``), as the `worker`
    field of its own lines says it; the name itself if it is not one."""
    prefix = "cofre-worker-"
    if name is not None and name.startswith(prefix) and name[len(prefix) :].isdigit():
        return int(name[len(prefix) :])
    return name
