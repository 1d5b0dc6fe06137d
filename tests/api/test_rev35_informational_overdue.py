"""Review 35: one failing informational check hid all the others from the gauge.

With ``COFRE_KEYS__OVERDUE_FAILS_READINESS`` set and a key past its cryptoperiod, the
cryptoperiod check raises (it fails readiness, as asked). The readiness checks that
inform were run as one dictionary, so that exception took the whole run with it: the
gauge `cofre_readiness_informational_failing` (session 34) reported no series at all,
not even the failing check, while the node was unready. Each check now runs on its own:
the one that raises shows as failing, the others as they are.

A real `cofre serve`: a data key cryptoperiod of about a second (`gt=0` days), so the
data key is overdue from just after start. The key is made by a first start with the
default cryptoperiods (ready, then stopped), so that the node under test assesses it
overdue at once: started with the key still in its second, the node cached "in
period" for `vault.cryptoperiod._CACHE_SECONDS` (a minute) and the test waited for it.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from api.health import INFORMATIONAL_CHECKS
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import health_ports, make_vault

# Bounds on waiting: they fail only on a hang.
BOUND = 120.0
CRYPTOPERIOD_DAYS = 0.00001  # 0.864 s


def test_an_overdue_key_failing_readiness_hides_no_informational_check(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    health_port, metrics_port = health_ports(vault)
    vault.env["COFRE_SERVER__WORKERS"] = "1"
    vault.start()  # migrates; the data key made, in its (default) cryptoperiod
    made = time.monotonic()
    vault.stop()
    vault.env.update(
        {
            "COFRE_KEYS__CRYPTOPERIOD_DATA_DAYS": str(CRYPTOPERIOD_DAYS),
            "COFRE_KEYS__CRYPTOPERIOD_WARN_DAYS": "0",
            "COFRE_KEYS__OVERDUE_FAILS_READINESS": "true",
        }
    )
    time.sleep(max(0.0, made + CRYPTOPERIOD_DAYS * 86_400 + 0.5 - time.monotonic()))
    vault.spawn()
    try:
        unready = _until_unready(f"http://127.0.0.1:{health_port}/readyz")
        gauges = _gauges(f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        vault.stop()
    assert unready.json() == {"status": "unready", "code": "key_cryptoperiod_overdue"}
    # The check that fails readiness is failing here too, and hides none of the others.
    assert gauges.get("key_cryptoperiods") == 1.0, gauges
    assert set(gauges) == INFORMATIONAL_CHECKS - {"audit_witnesses"}, gauges
    assert gauges["token_purge"] == gauges["key_rotation"] == gauges["audit_sequencer"] == 0.0


def _until_unready(url: str) -> httpx.Response:
    """The health port's answer once it is the overdue key's 503 (fails after `BOUND`)."""
    deadline = time.monotonic() + BOUND
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(url, timeout=10)
        except httpx.TransportError as exc:
            last = repr(exc)
        else:
            if answer.status_code == 503 and "key_cryptoperiod" in answer.text:
                return answer
            last = answer.text
        time.sleep(0.2)
    raise AssertionError(f"never unready for the overdue key: {last}")


def _gauges(url: str) -> dict[str, float]:
    """The informational gauge's series by check, once the scrape shows the vault's
    metrics (fails after `BOUND`)."""
    deadline = time.monotonic() + BOUND
    while True:
        try:
            scraped = httpx.get(url, timeout=10).text
        except httpx.ConnectError:
            scraped = ""
        if "cofre_" in scraped or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return {
        line.split('check="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in scraped.splitlines()
        if line.startswith("cofre_readiness_informational_failing{")
    }
