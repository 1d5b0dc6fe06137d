"""A running vault whose newest fingerprint key is gone from the token (session 41), on a
real `cofre serve` with its own copy of the real SoftHSM token.

The version before it serves and `/readyz` stays ready: a bound (docs/threat-model.md),
since a new key on CloudHSM reaches the cluster's HSMs one after another
(docs/cloudhsm.md, "Key availability"). Until session 41 nothing the on-call watches
showed it: no readiness check, no metric, no log line; only `cofre hsm status`, run by
hand. Now, once the version has been absent longer than
``COFRE_HSM__KEY_AVAILABILITY_TIMEOUT_SECONDS``, the informational check
``hsm_key_presence`` names it: on the mTLS `/readyz` (with the label), on the health
port (by name), in the ``cofre.readiness.informational_failing`` gauge, and in a WARNING
line; readiness and its HTTP status are unchanged.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.softhsm import SoftHSMToken, destroy_label
from tests.support.vault_process import VaultProcess, health_ports, log_events, make_vault, scrape
from vault.key_presence import KEY_PRESENCE_CHECK

CARD = {"pan": "4111111111111111", "format": "uuid"}
# Far bounds: they fail only on a hang.
BOUND_SECONDS = 120.0


def _rotate_fingerprint_key(vault: VaultProcess) -> None:
    """Two officers rotate the fingerprint key through the CLI; returns once the running
    vault uses `cofre-fp-v2`."""
    vault.acknowledge_custody()
    proposed = vault.cofre("keys", "rotate", "--kind", "fingerprint", "--as", "officer-alice")
    assert proposed.returncode == 0, proposed.stderr
    ceremony = proposed.stdout.split()[1].rstrip(":")
    approved = vault.cofre(
        "keys", "approve", ceremony, "--kind", "fingerprint", "--as", "officer-bob"
    )
    assert approved.returncode == 0, approved.stderr


def _ready_checks(client: httpx.Client) -> tuple[int, dict[str, Any]]:
    answer = client.get("/readyz")
    return answer.status_code, answer.json()


def test_a_missing_newest_key_is_named_while_the_node_stays_ready(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    health_port, metrics_port = health_ports(vault)
    vault.env.update(
        {
            "COFRE_HSM__KEY_AVAILABILITY_TIMEOUT_SECONDS": "1",
        }
    )
    vault.start()
    try:
        with vault.client() as client:
            status, body = _ready_checks(client)
            assert status == 200, body
            assert body["checks"][KEY_PRESENCE_CHECK] == "ok", body
            _rotate_fingerprint_key(vault)
            token = dataclasses.replace(softhsm_token, conf=vault.log.parent / "softhsm2.conf")
            destroy_label(token, "cofre-fp-v2")  # the vault's own copy of the token
            deadline = time.monotonic() + BOUND_SECONDS
            while True:
                status, body = _ready_checks(client)
                if status == 200 and body["checks"][KEY_PRESENCE_CHECK] != "ok":
                    break
                assert time.monotonic() < deadline, body
                time.sleep(0.2)
            tokenized = client.post("/v1/tokenize", json=CARD)
        health = httpx.get(f"http://127.0.0.1:{health_port}/readyz", timeout=30)
        scraped = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        vault.stop()
    # Ready, and the check names the missing version and what to do.
    assert body["status"] == "ready", body
    note = body["checks"][KEY_PRESENCE_CHECK]
    assert note.startswith("hsm_key_missing: cofre-fp-v2 "), note
    assert "docs/operations.md" in note, note
    # The version before it serves.
    assert tokenized.status_code in (200, 201), tokenized.text
    # The health port: 200, the check named (its text is not for that port).
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ready"
    assert KEY_PRESENCE_CHECK in health.json()["informational_failing"], health.text
    assert health.json()["checks"][KEY_PRESENCE_CHECK] == "failing"  # "ok" before session 46
    gauges = {
        line.split('check="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in scraped.splitlines()
        if line.startswith("cofre_readiness_informational_failing{")
    }
    assert gauges[KEY_PRESENCE_CHECK] == 1.0, gauges
    warnings = [
        e
        for e in log_events(vault.log)
        if e.get("level") == "warning" and e.get("check") == KEY_PRESENCE_CHECK
    ]
    assert warnings, log_events(vault.log)[-5:]
    assert warnings[0]["missing"] == ["cofre-fp-v2"], warnings
