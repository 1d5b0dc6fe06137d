"""SIGTERM while requests are in flight, as docs/operations.md ("Stopping and
draining") promises the on-call engineer: a clean exit (0, `vault stopped` with the
keys wiped), and every answer given durable: each token answered 200 before, during or
after the signal detokenizes to its card once the vault is started again (session 39's
walk; real `cofre serve`, two workers, SQLite and PostgreSQL). The crash test kills;
this one stops politely, mid-load."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from tests.support.pans import card_number
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, log_events, make_vault

BOUND = 60.0  # any wait here fails only on a hang


def _load(
    vault: VaultProcess, first: int, stop: threading.Event, acked: list[tuple[str, str]]
) -> None:
    serial = first
    while not stop.is_set():
        try:
            with vault.client("payments", timeout=BOUND) as client:
                while not stop.is_set():
                    serial += 1
                    pan = card_number("4", serial)
                    answer = client.post("/v1/tokenize", json={"pan": pan, "format": "uuid"})
                    if answer.status_code == 200:
                        acked.append((pan, answer.json()["token"]))
        except httpx.TransportError:
            return  # the listener has closed: the drain is under way


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigterm_mid_load_exits_cleanly_and_loses_no_answer(
    backend: str, tmp_path: Path, softhsm_token: SoftHSMToken, request: pytest.FixtureRequest
) -> None:
    url = None if backend == "sqlite" else request.getfixturevalue("pg_database")
    vault = make_vault(tmp_path / "v", softhsm_token, url)
    vault.env.update({"COFRE_SERVER__WORKERS": "2", "COFRE_LOG_LEVEL": "INFO"})
    vault.start()
    assert vault.process is not None
    stop = threading.Event()
    acked: list[tuple[str, str]] = []
    threads = [
        threading.Thread(target=_load, args=(vault, 100_000 * n, stop, acked)) for n in range(4)
    ]
    for thread in threads:
        thread.start()
    try:
        for _ in range(int(BOUND * 20)):  # some answers first: the signal lands mid-load
            if len(acked) >= 40:
                break
            threading.Event().wait(0.05)
        vault.process.send_signal(signal.SIGTERM)
        try:
            status = vault.process.wait(timeout=BOUND * 4)
        except subprocess.TimeoutExpired:
            vault.kill()
            pytest.fail("cofre serve did not stop")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=BOUND)
    assert status == 0
    stopped = [e for e in log_events(vault.log) if e.get("event") == "vault stopped"]
    assert sorted(e["worker"] for e in stopped) == [0, 1]  # type: ignore[type-var]
    assert all(e["data_keys"] == "wiped" for e in stopped)
    assert len(acked) >= 40
    vault.start()
    try:
        with vault.client("settlement") as client:
            lost = [
                token
                for pan, token in acked
                if (back := client.post("/v1/detokenize", json={"token": token})).status_code != 200
                or back.json()["pan"] != pan
            ]
    finally:
        vault.stop()
    assert lost == [], f"{len(lost)} of {len(acked)} answered tokens lost"
    verified = vault.cofre("audit", "verify", "--unsafe-no-witness")
    assert verified.returncode == 0, verified.stdout + verified.stderr
