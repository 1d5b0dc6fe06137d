"""A ready node's failing informational checks, seen from the health port and metrics.

The health port answers a ready node's probe with 200 and every check as ``ok`` (only
names and codes there: a check's text may name an internal address, review 34), so a
check that informs without failing readiness (audit queue stalled, keys near the end of
their cryptoperiod, witnesses lagging, a background loop failing) was invisible to
anyone who reads that port and not the mTLS `/readyz` (session 33's note, 3.2). The
answer stays as documented (200, ``ok``); the body now names the failing informational
checks, and a gauge per check says which fail on each worker's `/metrics`.

A real `cofre serve`: every key's cryptoperiod warning window (400 days) is longer than
its cryptoperiod (365 and 730 days), so `key_cryptoperiods` names them all as expiring
from the start, a real informational failure that never fails readiness.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from api.health import INFORMATIONAL_CHECKS
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import health_ports, make_vault, scrape


def test_a_ready_nodes_failing_informational_check_is_named_on_the_health_port(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    health_port, metrics_port = health_ports(vault)
    vault.env.update(
        {
            "COFRE_SERVER__WORKERS": "1",
            "COFRE_KEYS__CRYPTOPERIOD_WARN_DAYS": "400",
        }
    )
    vault.start()
    try:
        ready = httpx.get(f"http://127.0.0.1:{health_port}/readyz", timeout=30)
        scraped = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        vault.stop()
    # The documented answer: ready, each check "ok" or "failing" (no check's text on
    # this port; until session 46 a failing one read "ok" too).
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready"
    assert body["checks"]["key_cryptoperiods"] == "failing"
    assert {name for name, word in body["checks"].items() if word != "ok"} == {"key_cryptoperiods"}
    # Named, with nothing of its text.
    assert body["informational_failing"] == ["key_cryptoperiods"]
    gauges = {
        line.split('check="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in scraped.splitlines()
        if line.startswith("cofre_readiness_informational_failing{")
    }
    assert gauges["key_cryptoperiods"] == 1.0, gauges
    assert gauges["token_purge"] == gauges["key_rotation"] == 0.0, gauges
    assert gauges["audit_sequencer"] == 0.0, gauges
    # The gauge's checks (the runtime's) are the ones the health port names (no witness
    # configured here).
    assert set(gauges) == INFORMATIONAL_CHECKS - {"audit_witnesses"}
