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
signal forces) and SIGHUP (reload) to every worker. A worker that ends on its own stops
the others and the supervisor exits with its status: the orchestrator restarts the node
whole rather than leave it running short.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing
import os
import signal
from collections.abc import Callable
from multiprocessing.connection import wait
from pathlib import Path
from types import FrameType

import structlog

from cofre.settings import Settings

_log = structlog.get_logger("cofre.workers")
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max ..."


def worker_count(settings: Settings, cgroup: Path = _CGROUP_CPU_MAX) -> int:
    """``server.workers``, or the CPU cores this process may run on: its affinity, capped
    by its cgroup's CPU quota (a pod limited to 2 CPUs on a 64-core host gets 2)."""
    if settings.server.workers is not None:
        return settings.server.workers
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cgroup.read_text(encoding="ascii").split()[:2]
    except (OSError, ValueError):
        return max(1, cores)
    if quota == "max":
        return max(1, cores)
    return max(1, min(cores, math.ceil(int(quota) / int(period))))


def _worker(
    target: Callable[[Settings, int], None], settings: Settings, index: int, supervisor: int
) -> None:
    _die_with(supervisor)
    # Its own process group: a terminal's Ctrl-C reaches the supervisor only, which
    # forwards one SIGTERM; two signals would force the worker out mid-request.
    os.setpgid(0, 0)
    target(settings, index)


def _die_with(supervisor: int) -> None:
    """Have the kernel SIGKILL this worker when the supervisor dies (Linux
    ``PR_SET_PDEATHSIG``): a supervisor killed outright (OOM killer, SIGKILL) must not
    leave orphans serving the port, and to its workers it is the same crash (nothing
    was answered before its commit)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != supervisor:  # it died before the request took effect
        os._exit(1)


def run_workers(settings: Settings, count: int, target: Callable[[Settings, int], None]) -> int:
    """Run `target(settings, index)` in `count` spawned processes until they all end;
    forward stop and reload signals. Returns the exit status for the node: 0 when every
    worker stopped cleanly after a stop signal, else the first failed worker's status."""
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_worker, args=(target, settings, i, os.getpid()), name=f"cofre-worker-{i}"
        )
        for i in range(count)
    ]
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGTERM if signum == signal.SIGINT else signum)

    previous = {signum: signal.signal(signum, forward) for signum in _FORWARDED}
    status = 0
    try:
        for process in processes:
            process.start()
        _log.info("workers started", workers=count, pids=[p.pid for p in processes])
        running = list(processes)
        while running:
            wait([p.sentinel for p in running])
            for process in [p for p in running if p.exitcode is not None]:
                running.remove(process)
                code = process.exitcode or 0
                if code != 0 and status == 0:
                    status = code if code > 0 else 128 - code
                if not stopping:
                    _log.error(
                        "a worker ended on its own: stopping the node",
                        worker=process.name,
                        exit_code=process.exitcode,
                    )
                    status = status or 1
                    forward(signal.SIGTERM, None)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status
