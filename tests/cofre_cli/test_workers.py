"""`cofre serve` with several worker processes on one port (issue 21).

Real processes on SQLite (the case where several writers are new): both workers serve,
every answer is durable and audited exactly once, SIGTERM drains every worker and exits
0, a supervisor killed outright takes its workers with it, and the health listener's
readiness is the node's: a stuck worker makes every worker's probe answer fail.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine

from api.errors import WorkerUnready
from audit.store import AuditStore
from cofre.settings import Settings
from cofre_cli.commands.serve import with_workers
from cofre_cli.workers import NodeReadiness, worker_count
from hsm.errors import HSMUnavailable
from tests.support.pans import card_number
from tests.support.postgres import free_port
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault


def test_the_default_is_one_worker_per_core_and_the_setting_wins(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    unlimited = tmp_path / "cpu.max"
    unlimited.write_text("max 100000\n")
    assert worker_count(Settings(), unlimited) == cores
    assert worker_count(Settings(), tmp_path / "no-cgroup-v2") == cores
    assert worker_count(Settings(server={"workers": 3}), unlimited) == 3


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
        answers = [_probe(url) for _ in range(8)]
        assert all(a is not None and a[0] == 200 for a in answers), answers
        assert all(a[1]["checks"]["workers"] == "2 of 2 ready" for a in answers if a)  # type: ignore[index]
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
        deadline = time.monotonic() + 30
        in_a_row = 0
        while time.monotonic() < deadline and in_a_row < 6:
            answer = _probe(url)
            in_a_row = in_a_row + 1 if answer is not None and answer[0] == 200 else 0
            time.sleep(0.05)
        assert in_a_row == 6
    finally:
        vault.stop()
