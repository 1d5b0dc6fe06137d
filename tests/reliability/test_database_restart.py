"""Drill 36: PostgreSQL restarted (fast and immediate shutdown) under a node of two
workers serving single tokenize, batch tokenize and detokenize calls at once. Every call
is answered 200 or `503` problem+json with a storage code (never a 500); every token
answered 200 is stored with its audit entry and detokenizes after; `/readyz` fails while
the database is down and comes back without a restart, and the background loops and the
audit sequencer recover (the log verifies). `test_faults.py` covers one worker, single
tokenize calls and an immediate stop; this is the rest of the failure table's row."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.support.pans import card_number
from tests.support.postgres import PostgresCluster
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault
from vault.storage.database import create_database_engine

PROBLEM = "application/problem+json"
STORAGE_CODES = {"storage_unavailable", "audit_unavailable"}
# Bounds on waiting: they fail only on a hang.
BOUND = 60.0


class Load:
    """Three callers in a loop until stopped: single tokenize, batches of 20, and
    detokenize of the tokens already answered. Records every answer's status and code."""

    def __init__(self, vault: VaultProcess) -> None:
        self.vault = vault
        self.answers: Counter[tuple[str, int, str]] = Counter()
        self.acked: list[tuple[str, str]] = []
        self.batched = 0
        self.wrong: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(kind, n * 1_000_000))
            for n, kind in enumerate(("single", "batch", "detokenize"))
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=BOUND)

    def _run(self, kind: str, serial: int) -> None:
        identity = "settlement" if kind == "detokenize" else "payments"
        while not self.stop.is_set():
            try:
                with self.vault.client(identity, timeout=BOUND) as client:
                    while not self.stop.is_set():
                        serial += 1
                        self._call(client, kind, serial)
            except httpx.TransportError:
                time.sleep(0.05)  # a connection cut: a new one

    def _call(self, client: httpx.Client, kind: str, serial: int) -> None:
        pan, sent = "", ""
        if kind == "single":
            pan = card_number("4", serial)
            answer = client.post("/v1/tokenize", json={"pan": pan, "format": "pan_last4"})
        elif kind == "batch":
            items = [
                {"pan": card_number("5", serial * 20 + k), "format": "uuid"} for k in range(20)
            ]
            answer = client.post("/v1/tokenize/batch", json={"items": items})
        else:
            with self._lock:
                if not self.acked:
                    return
                pan, sent = self.acked[serial % len(self.acked)]
            answer = client.post("/v1/detokenize", json={"token": sent})
        code = ""
        if answer.status_code != 200:
            code = answer.json().get("code", "")
            if not answer.headers["content-type"].startswith(PROBLEM):
                self.wrong.append(f"{kind}: {answer.status_code} not problem+json")
        with self._lock:
            self.answers[(kind, answer.status_code, code)] += 1
            if answer.status_code == 200 and kind == "single":
                self.acked.append((pan, answer.json()["token"]))
            elif answer.status_code == 200 and kind == "batch":
                self.batched += 20
            elif answer.status_code == 200 and answer.json()["pan"] != pan:
                self.wrong.append("a detokenize answered another card")

    def settled(self) -> int:
        with self._lock:
            return sum(n for (_, status, _), n in self.answers.items() if status == 200)


def _wait(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _node_ready(vault: VaultProcess) -> bool:
    # Fresh connections: each may reach either worker, and readiness is the node's.
    for _ in range(6):
        try:
            with vault.client() as client:
                if client.get("/readyz").status_code != 200:
                    return False
        except httpx.TransportError:
            return False
    return True


def _unaudited_tokens(url: str) -> int:
    engine = create_database_engine(url)
    try:
        with engine.connect() as connection:
            ids = list(connection.execute(sa.text("SELECT id FROM tokens")).scalars())
            log = "\n".join(
                connection.execute(sa.text("SELECT payload FROM audit_entries")).scalars()
            )
    finally:
        engine.dispose()
    return sum(1 for token_id in ids if token_id not in log)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_database_restart_under_mixed_load_on_two_workers(
    tmp_path: Path, softhsm_token: SoftHSMToken, durable_postgres: PostgresCluster, mode: str
) -> None:
    url = durable_postgres.sqlalchemy_url()
    vault = make_vault(tmp_path / "v", softhsm_token, url)
    vault.env.update({"COFRE_SERVER__WORKERS": "2", "COFRE_LOG_LEVEL": "INFO"})
    vault.start()
    with Load(vault) as load:
        _wait("no call answered before the restart", lambda: load.settled() > 20)
        durable_postgres.stop(mode)
        _wait("readiness did not fail", lambda: not _node_ready(vault))
        down = sum(load.answers.values())
        _wait("no call answered while down", lambda: sum(load.answers.values()) > down + 5)
        durable_postgres.start()
        _wait("the node did not recover by itself", lambda: _node_ready(vault))
        settled = load.settled()
        _wait("no call answered after recovery", lambda: load.settled() > settled + 20)
    assert load.wrong == []
    unexpected = {
        key: n for key, n in load.answers.items() if key[1] != 200 and key[2] not in STORAGE_CODES
    }
    assert unexpected == {}
    assert any(status == 503 for _, status, _ in load.answers), "the outage was not seen"
    assert vault.process is not None
    assert vault.process.poll() is None, "the node stopped"
    with vault.client("settlement") as client:
        lost = [
            token
            for pan, token in load.acked
            if client.post("/v1/detokenize", json={"token": token}).json().get("pan") != pan
        ]
    assert lost == []
    assert _unaudited_tokens(url) == 0
    log = vault.log.read_text(errors="replace")
    assert "background loop recovered" in log
    assert "unexpected error" not in log
    vault.stop()
    assert vault.cofre("audit", "sequence").returncode == 0
    verified = vault.cofre("audit", "verify", "--unsafe-no-witness")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("OK:")
