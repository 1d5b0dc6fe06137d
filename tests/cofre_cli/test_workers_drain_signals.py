"""Review 37: a reload (SIGHUP) that reaches `cofre serve` while its workers drain.
Harness as tests/cofre_cli/test_workers_start.py."""

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

import uvicorn

from api.balance import Counts
from api.lifecycle import ManagedServer, Readiness, run_until_stopped
from api.routes import _offload
from cofre_cli.workers import Stamps, run_workers


async def _answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _server() -> ManagedServer:
    return ManagedServer(
        uvicorn.Config(_answer, host="127.0.0.1", port=0, log_config=None, lifespan="off")
    )


def _relay_in_flight(
    directory: Path, index: int, stamps: Stamps, loads: Counts, _announce: Callable[[], None]
) -> None:
    call = _offload._relays.submit(time.sleep, 6)  # as `kept` submits a relay
    done = _offload._tracked()
    call.add_done_callback(lambda _: done())
    run_until_stopped(
        _server(),
        None,
        Readiness(),
        on_reload=lambda: None,
        on_loop=lambda _loop: (directory / f"up-{index}").touch(),
    )
    (directory / f"drained-{index}").touch()


def _plain(directory: Path) -> None:
    sys.exit(run_workers(directory, 2, _relay_in_flight))  # type: ignore[arg-type]


def _spawn(target: Any, directory: Path) -> SpawnProcess:
    process = multiprocessing.get_context("spawn").Process(target=target, args=(directory,))
    process.start()
    return process


def _end(process: SpawnProcess) -> int | None:
    process.join(60)
    if process.exitcode is None:
        process.kill()
        process.join(10)
        return None
    return process.exitcode


def test_a_reload_during_the_drain_does_not_kill_a_worker(tmp_path: Path) -> None:
    """SIGHUP (a certificate rotation's `kill -HUP 1`) while the workers wait in
    `drain_left_calls` for a relay (4b9d6bf): `_serve` removed its handlers (SIG_DFL),
    the supervisor still forwards SIGHUP, the worker dies of it before the relay's audit
    entry and the release: node exit 129."""
    supervisor = _spawn(_plain, tmp_path)
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"up-{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert supervisor.pid is not None
    os.kill(supervisor.pid, signal.SIGTERM)
    time.sleep(1.5)  # listeners stopped; drain_left_calls waits for the relay
    os.kill(supervisor.pid, signal.SIGHUP)
    code = _end(supervisor)
    assert sorted(p.name for p in tmp_path.glob("drained-*")) == ["drained-0", "drained-1"]
    assert code == 0
