"""`cofre serve` with several worker processes on one port (issue 21).

Real processes on SQLite (the case where several writers are new): both workers serve,
every answer is durable and audited exactly once, SIGTERM drains every worker and exits
0, and a supervisor killed outright takes its workers with it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from audit.store import AuditStore
from cofre.settings import Settings
from cofre_cli.commands.serve import with_workers
from cofre_cli.workers import worker_count
from tests.support.pans import card_number
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
