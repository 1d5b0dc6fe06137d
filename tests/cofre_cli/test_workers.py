"""`cofre serve` with several worker processes on one port (issue 21).

Real processes on SQLite (the case where several writers are new): both workers serve,
every answer is durable and audited exactly once, SIGTERM drains every worker and exits
0, a supervisor killed outright takes its workers with it, and the health listener's
readiness is the node's: a stuck worker makes every worker's probe answer fail.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from sqlalchemy import create_engine
from structlog.testing import capture_logs

from api.errors import WorkerUnready
from api.health import HealthApp
from audit.store import AuditStore
from cofre.settings import Settings, load_settings
from cofre_cli.commands.serve import with_workers
from cofre_cli.serving import serve_worker
from cofre_cli.workers import STALE_SECONDS, NodeReadiness, Stamps, worker_count
from hsm.errors import HSMUnavailable
from tests.support.pans import card_number
from tests.support.postgres import free_port
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault


def test_the_default_is_one_worker_per_core_and_the_setting_wins(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    unlimited = tmp_path / "cpu.max"
    unlimited.write_text("max 100000\n")
    no_v1 = tmp_path / "no-cgroup-v1"
    assert worker_count(Settings(), unlimited, no_v1) == cores
    assert worker_count(Settings(), tmp_path / "no-cgroup-v2", no_v1) == cores
    assert worker_count(Settings(server={"workers": 3}), unlimited, no_v1) == 3


def test_the_workers_option_overrides_the_setting() -> None:
    settings = Settings(server={"workers": 3})
    assert with_workers(settings, None) is settings
    assert with_workers(settings, 5).server.workers == 5
    assert with_workers(settings, 5).server.port == settings.server.port


def test_the_default_follows_the_cgroup_cpu_quota(tmp_path: Path) -> None:
    quota = tmp_path / "cpu.max"
    quota.write_text("50000 100000\n")  # half a CPU: still one worker
    assert worker_count(Settings(), quota) == 1
    quota.write_text(f"{100000 * 64} 100000\n")  # more than the cores: the cores
    assert worker_count(Settings(), quota) == len(os.sched_getaffinity(0))


def test_the_default_follows_a_cgroup_v1_cpu_quota(tmp_path: Path) -> None:
    """With no cgroup v2 `cpu.max` (a v1 node), the cpu controller's CFS quota caps the
    count, and "-1" (no limit) leaves every core (review 34)."""
    cores = len(os.sched_getaffinity(0))
    v1 = tmp_path / "cpu"
    v1.mkdir()
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")  # half a CPU: still one worker
    assert worker_count(Settings(), tmp_path / "no-cpu.max", v1) == 1
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert worker_count(Settings(), tmp_path / "no-cpu.max", v1) == cores
    (v1 / "cpu.cfs_quota_us").write_text(f"{100000 * 64}\n")
    assert worker_count(Settings(), tmp_path / "no-cpu.max", v1) == cores
    # v2 wins where both exist (a hybrid host).
    v2 = tmp_path / "cpu.max"
    v2.write_text("max 100000\n")
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")
    assert worker_count(Settings(), v2, v1) == cores


def _children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [int(p) for p in children.read_text().split()] if children.exists() else []
    return [p for p in pids if b"resource_tracker" not in _cmdline(p)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _two_workers(tmp_path: Path, token: SoftHSMToken) -> VaultProcess:
    vault = make_vault(tmp_path / "node", token, None)
    vault.env.update({"COFRE_SERVER__WORKERS": "2", "COFRE_LOG_LEVEL": "INFO"})
    vault.start()
    assert vault.process is not None
    return vault


def test_two_workers_share_the_port_and_sqlite_stays_exact(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    vault = _two_workers(tmp_path, softhsm_token)
    assert vault.process is not None
    workers = _children(vault.process.pid)
    assert len(workers) == 2
    tokens = set()
    try:
        # A fresh connection each time: the kernel hashes each to one of the workers.
        for i in range(40):
            with vault.client() as client:
                response = client.post(
                    "/v1/tokenize", json={"pan": card_number("4", 100 + i), "format": "uuid"}
                )
                assert response.status_code == 200, response.text
                tokens.add(response.json()["token"])
        vault.process.send_signal(signal.SIGTERM)
        assert vault.process.wait(timeout=60) == 0
    finally:
        vault.stop()
    assert len(tokens) == 40
    events = [json.loads(line) for line in vault.log.read_text().splitlines() if line.strip()]
    # Every line a worker wrote names it (its threads' and uvicorn's too); only the
    # supervisor's own lines do not.
    supervisor = {
        "starting",
        "workers started",
        "INSECURE setting in effect",
        "ready: every worker answers",  # session 39: each worker told it (a pipe)
    }
    unnamed = {e["event"] for e in events if "worker" not in e}
    assert unnamed <= supervisor, unnamed
    served_by = {e.get("worker") for e in events if e.get("event") == "request"}
    assert served_by == {0, 1}
    stopped = [e for e in events if e.get("event") == "vault stopped"]
    assert sorted(e["worker"] for e in stopped) == [0, 1]
    assert all(e["data_keys"] == "wiped" for e in stopped)
    database = vault.env["COFRE_DATA_DIR"] + "/cofre.sqlite3"
    with closing(sqlite3.connect(database)) as conn:
        stored = conn.execute("SELECT count(*) FROM tokens").fetchone()
    assert stored == (40,)
    # Two sequencers ran; each entry was integrated once, at one index, in one tree
    # that every signed head agrees with.
    engine = create_engine(f"sqlite:///{database}")
    try:
        report = AuditStore(engine).verify(None)
    finally:
        engine.dispose()
    assert report.problems == []
    assert report.entries + report.queued >= 40


def test_a_supervisor_killed_outright_takes_its_workers_with_it(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    vault = _two_workers(tmp_path, softhsm_token)
    assert vault.process is not None
    workers = _children(vault.process.pid)
    assert len(workers) == 2
    try:
        vault.kill()
        for _ in range(3000):
            if not any(_alive(pid) for pid in workers):
                break
            time.sleep(0.01)
        else:
            pytest.fail("a worker outlived its supervisor")
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _node(stamps: list[float], clock: _Clock) -> tuple[NodeReadiness, NodeReadiness, list[bool]]:
    broken = [False]

    def second_check() -> dict[str, str]:
        if broken[0]:
            raise HSMUnavailable("the session is gone")
        return {"hsm": "ok"}

    first = NodeReadiness(stamps, 0, lambda: {"hsm": "ok"}, stale_after=5, clock=clock)
    second = NodeReadiness(stamps, 1, second_check, stale_after=5, clock=clock)
    return first, second, broken


def test_a_node_is_ready_only_while_every_worker_has_passed_its_check_lately() -> None:
    clock, stamps = _Clock(), [0.0, 0.0]
    first, second, broken = _node(stamps, clock)
    # Worker 1 has not passed a check yet (still opening its HSM session): the probe
    # that reaches worker 0 must not mark the pod ready.
    with pytest.raises(WorkerUnready):
        first.check()
    second.beat()
    assert first.check() == {"hsm": "ok", "workers": "2 of 2 ready"}
    # A worker that stops beating (stuck, or its beat thread gone) goes stale.
    clock.now += 5.5
    with pytest.raises(WorkerUnready, match=r"\[1\]"):
        first.check()
    second.beat()
    assert first.check()["workers"] == "2 of 2 ready"
    # A failing check clears the stamp at once, not after it goes stale; the worker's
    # own probe answer carries its own code.
    broken[0] = True
    second.beat()
    assert stamps[1] == 0.0
    with pytest.raises(WorkerUnready):
        first.check()
    with pytest.raises(HSMUnavailable):
        second.check()
    broken[0] = False
    second.beat()
    assert second.check()["workers"] == "2 of 2 ready"


def test_a_stopped_beat_leaves_the_node_unready() -> None:
    stamps = [0.0, 0.0]
    first = NodeReadiness(stamps, 0, lambda: {"hsm": "ok"})
    second = NodeReadiness(stamps, 1, lambda: {"hsm": "ok"})
    stop = second.start(every=0.05)
    for _ in range(200):
        if stamps[1] > 0:
            break
        time.sleep(0.01)
    assert first.check()["workers"] == "2 of 2 ready"
    stop()
    assert stamps[1] == 0.0
    with pytest.raises(WorkerUnready):
        first.check()


def _probe(url: str) -> tuple[int, dict[str, object]] | None:
    """One probe on a fresh connection (the kernel hands it to either worker); None
    when it reached a stopped worker and timed out."""
    try:
        response = httpx.get(url, timeout=1.0)
    except httpx.TransportError:
        return None
    return response.status_code, response.json()


def _until_ready(url: str, times: int = 3, seconds: float = 30.0) -> None:
    """Return once the node's probe answered 200 `times` in a row."""
    deadline, in_a_row = time.monotonic() + seconds, 0
    while time.monotonic() < deadline and in_a_row < times:
        answer = _probe(url)
        in_a_row = in_a_row + 1 if answer is not None and answer[0] == 200 else 0
        time.sleep(0.05)
    assert in_a_row == times, "the node's probe never answered ready"


def test_a_stuck_worker_makes_the_health_probe_fail_on_every_worker(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    health_port = free_port()
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    vault.env.update({"COFRE_SERVER__WORKERS": "2", "COFRE_SERVER__HEALTH_PORT": str(health_port)})
    vault.start()
    assert vault.process is not None
    url = f"http://127.0.0.1:{health_port}/readyz"
    workers = _children(vault.process.pid)
    assert len(workers) == 2
    try:
        # `start` waits for the mTLS /readyz, each worker's own: a worker's first beat
        # may still be on its way then, and the probe answers for the node. A clean-
        # clone CI run (session 16) probed in that window and got one 503.
        _until_ready(url)
        answers = [_probe(url) for _ in range(8)]
        assert all(a is not None and a[0] == 200 for a in answers), answers
        assert all(a[1]["checks"]["workers"] == "ok" for a in answers if a)  # type: ignore[index]
        os.kill(workers[1], signal.SIGSTOP)  # stuck: it neither answers nor beats
        try:
            deadline = time.monotonic() + 30
            refused: list[tuple[int, dict[str, object]]] = []
            while time.monotonic() < deadline and len(refused) < 3:
                answer = _probe(url)
                if answer is not None and answer[0] == 503:
                    refused.append(answer)
                time.sleep(0.2)
            assert len(refused) == 3
            assert all(
                body == {"status": "unready", "code": "worker_unready"} for _, body in refused
            )
        finally:
            os.kill(workers[1], signal.SIGCONT)
        _until_ready(url, times=6)
    finally:
        vault.stop()


# ------------------------------------------------------------------ review 16


def test_a_failing_worker_logs_why_once_per_change() -> None:
    """The operations guide sends the on-call engineer who sees ``worker_unready`` to the
    failing worker's log: the beat must say there why (once, not every second), and
    when it recovers. An unready pod gets no traffic, so nothing else would."""
    clock, stamps = _Clock(), [0.0, 0.0]
    _, second, broken = _node(stamps, clock)
    with capture_logs() as logs:
        second.beat()
        broken[0] = True
        for _ in range(3):
            second.beat()
        broken[0] = False
        for _ in range(3):
            second.beat()
    assert [(e["event"], e["loop"], e["log_level"]) for e in logs] == [
        ("background loop failing", "node readiness", "warning"),
        ("background loop recovered", "node readiness", "info"),
    ]
    assert logs[0]["error"] == "HSMUnavailable: the session is gone"


def test_a_worker_that_stops_beating_is_named_in_the_other_workers_logs() -> None:
    """A stuck worker cannot log; the workers that answer ``worker_unready`` for it say
    which one is late, once per change (a worker still starting is not late)."""
    clock, stamps = _Clock(), [0.0, 0.0]
    first, second, _ = _node(stamps, clock)
    with capture_logs() as logs:
        first.beat()  # worker 1 has not started: not reported
        second.beat()
        first.beat()
        clock.now += 5.5
        first.beat()
        first.beat()
        second.beat()
        first.beat()
    assert [(e["event"], e.get("workers"), e["log_level"]) for e in logs] == [
        ("worker(s) of this node late", [1], "warning"),
        ("every worker of this node ready again", None, "info"),
    ]


def test_the_beat_logs_as_its_worker() -> None:
    """Workers share stdout: a line without the worker's index cannot be traced to it.
    (A thread does not inherit the context the worker bound its index in.)"""
    stamps = [0.0, 0.0]
    broken = threading.Event()
    broken.set()

    def check() -> dict[str, str]:
        if broken.is_set():
            raise HSMUnavailable("the session is gone")
        return {"hsm": "ok"}

    node = NodeReadiness(stamps, 1, check)
    structlog.contextvars.bind_contextvars(worker=1)
    try:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            stop = node.start(every=0.02)
            try:
                for _ in range(200):
                    if logs:
                        break
                    time.sleep(0.01)
            finally:
                stop()
    finally:
        structlog.contextvars.unbind_contextvars("worker")
    assert logs, "the beat logged nothing"
    assert all(e.get("worker") == 1 for e in logs), logs


def test_a_pass_that_started_before_a_failure_does_not_refresh_the_stamp() -> None:
    """The probe's thread and the beat run the check at once: a pass that began before
    the HSM was lost, and ends after the beat found it lost and cleared the stamp, must
    not stamp the worker ready again."""
    stamps = [0.0, 0.0]
    calls = 0
    first_call_waiting, release = threading.Event(), threading.Event()

    def check() -> dict[str, str]:
        nonlocal calls
        calls += 1
        if calls == 1:  # the probe's check: slow, and passes
            first_call_waiting.set()
            assert release.wait(10)
            return {"hsm": "ok"}
        raise HSMUnavailable("the session is gone")  # the beat's, begun later

    node = NodeReadiness(stamps, 1, check)

    def probe_check() -> None:
        with contextlib.suppress(WorkerUnready):  # worker 0 never beats here
            node.check()

    probe = threading.Thread(target=probe_check)
    probe.start()
    assert first_call_waiting.wait(10)
    time.sleep(0.01)  # the beat's check begins strictly later
    node.beat()
    assert stamps[1] == 0.0
    release.set()
    probe.join(10)
    assert stamps[1] == 0.0, "a stale pass marked the worker ready after a failure"


def _wedgeable_worker(env: dict[str, str], stamps: Stamps) -> None:
    """Worker 1 of a node, as `cofre serve` runs it, whose health listener blocks its
    event loop for ``/wedge?SECONDS`` (the stand-in for any handler that blocks it)."""
    os.environ.update(env)
    answer = HealthApp.__call__

    async def call(self: HealthApp, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/wedge":
            time.sleep(float(scope["query_string"]))  # noqa: ASYNC251 - the point
        await answer(self, scope, receive, send)

    HealthApp.__call__ = call  # type: ignore[method-assign]
    serve_worker(load_settings(), 1, stamps)


def test_a_worker_whose_event_loop_is_stuck_is_not_stamped_ready(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    """A worker whose event loop is blocked serves none of its connections (the mTLS
    and health listeners share that loop) and must go stale like a stopped process:
    a beat thread that runs the checks beside the loop proves nothing about it."""
    health_port = free_port()
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    vault.env["COFRE_SERVER__HEALTH_PORT"] = str(health_port)
    migrated = vault.cofre("db", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    context = multiprocessing.get_context("spawn")
    stamps = context.RawArray("d", 2)
    worker = context.Process(target=_wedgeable_worker, args=(vault.env, stamps))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while stamps[1] == 0.0 and time.monotonic() < deadline and worker.is_alive():
            time.sleep(0.1)
        assert stamps[1] > 0.0, "worker 1 never passed its checks"
        wedge = STALE_SECONDS + 4
        url = f"http://127.0.0.1:{health_port}/wedge?{wedge}"
        blocked = threading.Thread(target=httpx.get, args=(url,), kwargs={"timeout": 30})
        blocked.start()
        time.sleep(0.5)
        assert _probe(f"http://127.0.0.1:{health_port}/livez") is None  # it is stuck
        ages = []
        until = time.monotonic() + wedge - 1
        while time.monotonic() < until:
            stamp = stamps[1]
            ages.append(math.inf if stamp == 0.0 else time.monotonic() - stamp)
            time.sleep(0.1)
        blocked.join(30)
        assert max(ages) > STALE_SECONDS, f"stamped ready while its loop was stuck: {ages}"
    finally:
        worker.terminate()
        worker.join(30)
        if worker.is_alive():
            worker.kill()
            worker.join(10)


def test_a_second_node_on_the_same_port_is_refused(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    """Review 34: workers bind with SO_REUSEPORT, so a second `cofre serve` of the same
    user on the same port started too, and the kernel split the connections between two
    vaults with different stores (20 tokens in each of 40). It now stops at once."""
    first = make_vault(tmp_path / "a", softhsm_token, None)
    second = make_vault(tmp_path / "b", softhsm_token, None, port=first.port)
    for vault in (first, second):
        vault.env["COFRE_SERVER__WORKERS"] = "2"
    first.start()
    try:
        assert second.cofre("db", "migrate").returncode == 0
        result = second.cofre("serve")
    finally:
        first.stop()
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{first.port}" in result.stderr + result.stdout
