"""Signals that reach `cofre serve` while its workers start (review 34).

A stop must stop the node cleanly however early it comes: the supervisor starts no
more workers and tells each started one, and a worker that has not yet installed its
handlers must not die of the signal's default action (the node would exit 143). A
reload (SIGHUP) during start must not kill a worker either (the node exited 129): it is
done once the worker serves.

Real processes, as `run_workers` spawns them; each worker runs `run_until_stopped` on a
small plain-HTTP server. The signal is sent from inside the supervisor's own start loop,
right after (or before) a given worker's process starts, while that worker is still an
interpreter importing its modules: no sleep decides the outcome.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from api.balance import Counts
from api.lifecycle import ManagedServer, Readiness, run_until_stopped
from cofre_cli.workers import Stamps, run_workers

# A backstop only: a node that passes stops within a second or two.
_WAIT_SECONDS = 60.0


async def _answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _worker(
    directory: Path, index: int, stamps: Stamps, loads: Counts, _announce: Callable[[], None]
) -> None:
    """A worker of the node: it notes that it began, serves until stopped, and notes
    each reload and that it served."""
    (directory / f"began-{index}").touch()
    server = ManagedServer(
        uvicorn.Config(_answer, host="127.0.0.1", port=0, log_config=None, lifespan="off")
    )

    def reloaded() -> None:
        (directory / f"reloaded-{index}").touch()

    def serving(_loop: object) -> None:
        (directory / f"up-{index}").touch()

    run_until_stopped(server, None, Readiness(), on_reload=reloaded, on_loop=serving)


def _supervisor(directory: Path, count: int, signum: int, worker: int, before: bool) -> None:
    """`run_workers` as `cofre serve` runs it, sent `signum` by itself just before or
    just after it starts worker `worker`'s process; exits with the node's status."""
    start = SpawnProcess.start

    def start_then_signal(process: SpawnProcess) -> None:
        mine = process.name == f"cofre-worker-{worker}"
        if mine and before:
            os.kill(os.getpid(), signum)
        start(process)
        if mine and not before:
            os.kill(os.getpid(), signum)

    SpawnProcess.start = start_then_signal  # type: ignore[method-assign,assignment]
    sys.exit(run_workers(directory, count, _worker))  # type: ignore[arg-type]


def _run_supervisor(directory: Path, *args: object) -> SpawnProcess:
    process = multiprocessing.get_context("spawn").Process(
        target=_supervisor, args=(directory, *args), name="cofre-supervisor"
    )
    process.start()
    return process


def _end(process: SpawnProcess) -> int | None:
    """`process`'s exit status, or None when it did not end: then it is killed (its
    workers die with it, `PR_SET_PDEATHSIG`)."""
    process.join(_WAIT_SECONDS)
    if process.exitcode is None:
        process.kill()
        process.join(10)
        return None
    return process.exitcode


@pytest.mark.parametrize(
    ("worker", "before"),
    [(0, False), (1, True), (1, False)],
    ids=["after-0", "before-1", "after-1"],
)
def test_a_stop_while_the_workers_start_stops_the_node_cleanly(
    tmp_path: Path, worker: int, before: bool
) -> None:
    """SIGTERM while the supervisor starts 3 workers: no worker is started after the
    one being started (a signal during a start waits for its pid), every started one
    stops (none by the default action of the signal, which reached it while it was
    still importing), and the node exits 0."""
    supervisor = _run_supervisor(tmp_path, 3, signal.SIGTERM, worker, before)
    code = _end(supervisor)
    assert code is not None, "the node did not stop: a started worker never got the stop"
    began = sorted(path.name for path in tmp_path.glob("began-*"))
    assert began == [f"began-{index}" for index in range(worker + 1)]
    assert code == 0


def test_a_reload_while_the_workers_start_is_done_once_they_serve(tmp_path: Path) -> None:
    """SIGHUP (`kill -HUP 1`, the documented reload) while worker 0 is still importing:
    it is not killed (the node exited 129); it reloads once it serves, and the node
    then stops cleanly on SIGTERM."""
    supervisor = _run_supervisor(tmp_path, 2, signal.SIGHUP, 0, False)
    try:
        deadline = time.monotonic() + _WAIT_SECONDS
        wanted = [tmp_path / "reloaded-0", tmp_path / "up-1"]
        while not all(path.exists() for path in wanted) and supervisor.is_alive():
            assert time.monotonic() < deadline, "worker 0 never reloaded"
            time.sleep(0.05)
        assert supervisor.is_alive(), f"the node exited {supervisor.exitcode} on a reload"
        assert supervisor.pid is not None
        os.kill(supervisor.pid, signal.SIGTERM)
    finally:
        code = _end(supervisor)
    assert code == 0
