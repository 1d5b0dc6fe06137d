"""Drill 36: one worker of a two-worker node SIGKILLed under tokenize load (the kernel's
OOM killer does the same). The node does not run short: the supervisor names it, drains
the other worker as after a SIGTERM and exits 137 for the orchestrator to restart the
pod (docs/operations.md, Topology and "Failure behaviour"). Nothing answered is lost,
and the audit log verifies once the node is back."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.support.pans import card_number
from tests.support.postgres import PostgresCluster
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault

# Bounds on waiting: they fail only on a hang.
BOUND = 60.0


def _workers(supervisor: int) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [
        int(pid)
        for pid in children
        if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def _tokenize_until(
    vault: VaultProcess, serial: int, stop: threading.Event, acked: list[tuple[str, str]]
) -> None:
    while not stop.is_set():
        try:
            with vault.client(timeout=BOUND) as client:
                while not stop.is_set():
                    serial += 1
                    pan = card_number("4", serial)
                    answer = client.post("/v1/tokenize", json={"pan": pan, "format": "pan_last4"})
                    if answer.status_code == 200:
                        acked.append((pan, answer.json()["token"]))
        except httpx.TransportError:
            time.sleep(0.05)  # the node is down


def test_a_killed_worker_stops_its_node_which_loses_nothing(
    tmp_path: Path, softhsm_token: SoftHSMToken, durable_postgres: PostgresCluster
) -> None:
    url = durable_postgres.sqlalchemy_url()
    vault = make_vault(tmp_path / "v", softhsm_token, url)
    vault.env.update({"COFRE_SERVER__WORKERS": "2", "COFRE_LOG_LEVEL": "INFO"})
    vault.start()
    assert vault.process is not None
    workers = _workers(vault.process.pid)
    assert len(workers) == 2
    acked: list[tuple[str, str]] = []
    stop = threading.Event()
    callers = [
        threading.Thread(target=_tokenize_until, args=(vault, n * 1_000_000, stop, acked))
        for n in range(3)
    ]
    for caller in callers:
        caller.start()
    try:
        deadline = time.monotonic() + BOUND
        while len(acked) < 30:
            assert time.monotonic() < deadline, "no load reached the node"
            time.sleep(0.05)
        os.kill(workers[0], signal.SIGKILL)
        assert vault.process.wait(timeout=BOUND) == 128 + signal.SIGKILL
    finally:
        stop.set()
        for caller in callers:
            caller.join(timeout=BOUND)
    events = [json.loads(line) for line in vault.log.read_text().splitlines() if line.strip()]
    [ended] = [e for e in events if e["event"] == "a worker ended on its own: stopping the node"]
    assert ended["exit_code"] == -signal.SIGKILL
    assert "worker" not in ended  # the supervisor's line: `worker` is a writer's index
    killed = ended["ended_worker"]
    stopped = [e["worker"] for e in events if e["event"] == "vault stopped"]
    assert stopped == [1 - killed]  # the other worker drained; the killed one could not
    vault.start()  # what the orchestrator does
    with vault.client("settlement") as client:
        lost = [
            token
            for pan, token in acked
            if client.post("/v1/detokenize", json={"token": token}).json().get("pan") != pan
        ]
    vault.stop()
    assert lost == []
    assert vault.cofre("audit", "sequence").returncode == 0
    verified = vault.cofre("audit", "verify", "--unsafe-no-witness")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("OK:")
