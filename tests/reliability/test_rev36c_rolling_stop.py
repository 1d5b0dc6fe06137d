"""A rolling restart under load: every worker's stop still writes ``process.stop`` and
a last signed head that covers every answered operation (review 36c).

Session 36 put the stop after the drain under one 5 s deadline (`cofre_cli.stopping`):
what does not end by then is abandoned. That is for outages; on a healthy database the
deadline must never bite, or PCI DSS 10.2.1.6 (the stop of the process) and 10.3 (every
answered operation's entry sequenced under a signed head) would be lost at each
restart. A real `cofre serve` (2 workers) takes tokenize and batch load, gets SIGTERM
in the middle of it, and its audit log is read afterwards. No timing assertion: the
waits are bounds that fail only on a hang."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from tests.support.audit_trail import audit_state
from tests.support.pans import card_number
from tests.support.postgres import free_port
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, log_events, make_vault

BOUND = 60.0  # any wait here fails only on a hang


def _load(vault: VaultProcess, kind: str, stop: threading.Event, answered: list[int]) -> None:
    serial = {"single": 0, "batch": 500_000}[kind]
    while not stop.is_set():
        try:
            with vault.client("payments", timeout=BOUND) as client:
                while not stop.is_set():
                    serial += 1
                    if kind == "single":
                        body = {"pan": card_number("4", serial), "format": "pan_last4"}
                        answer = client.post("/v1/tokenize", json=body)
                    else:
                        items = [
                            {"pan": card_number("5", serial * 10 + k), "format": "uuid"}
                            for k in range(10)
                        ]
                        answer = client.post("/v1/tokenize/batch", json={"items": items})
                    answered.append(answer.status_code)
        except httpx.TransportError:
            return  # the listener has closed: the drain is under way


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_stop_under_load_loses_no_stop_entry_and_no_head(
    backend: str, tmp_path: Path, softhsm_token: SoftHSMToken, request: pytest.FixtureRequest
) -> None:
    url = None if backend == "sqlite" else request.getfixturevalue("pg_database")
    vault = make_vault(tmp_path / "v", softhsm_token, url)
    vault.env.update(
        {
            "COFRE_SERVER__WORKERS": "2",
            "COFRE_SERVER__HEALTH_PORT": str(free_port()),
            "COFRE_SERVER__DRAIN_TIMEOUT_SECONDS": "2",
            "COFRE_LOG_LEVEL": "INFO",
        }
    )
    vault.start()
    assert vault.process is not None
    stop = threading.Event()
    answered: list[int] = []
    threads = [
        threading.Thread(target=_load, args=(vault, kind, stop, answered))
        for kind in ("single", "single", "batch")
    ]
    for thread in threads:
        thread.start()
    try:
        # Some answers first, so the SIGTERM lands in the middle of the load.
        with vault.client() as probe:
            for _ in range(int(BOUND * 10)):
                if answered.count(200) >= 30:
                    break
                probe.get("/readyz")
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
    assert answered.count(200) >= 30
    events = log_events(vault.log)
    abandoned = [e for e in events if "abandoned" in str(e.get("event"))]
    stopped = [e for e in events if e.get("event") == "vault stopped"]
    database = url or f"sqlite:///{tmp_path / 'v' / 'cofre.sqlite3'}"
    actions, queued, leaves, head = audit_state(database)
    assert abandoned == [], abandoned
    assert [e.get("abandoned") for e in stopped] == [[], []], stopped
    assert actions.count("process.stop") == 2, sorted(set(actions))
    assert queued == 0  # every entry sequenced by the last ticks
    assert head == leaves == len(actions)  # and under the last signed head
    assert status == 0
