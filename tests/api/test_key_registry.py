"""Key substitution seen from outside (PCI DSS 3.7.7): a KEK planted on the token under a
newer Cofre label fails readiness with its own code, raises a metric, is flagged in the
key inventory, and a data-key rotation still wraps under the registered KEK."""

from __future__ import annotations

import time
from pathlib import Path

from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault

PLANTED = "cofre-kek-v8"


def _gauge(vault: VaultServer, name: str) -> int | None:
    data = vault.metrics.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    return int(metric.data.data_points[0].value)  # type: ignore[union-attr]
    return None


def test_planted_kek_is_reported_and_never_used(tmp_path: Path, hsm_provider: HSMProvider) -> None:
    with running_vault(tmp_path, hsm_provider) as vault:
        with vault.client() as c:
            assert c.get("/readyz").status_code == 200
        assert _gauge(vault, "cofre.hsm.unregistered_keys") == 0
        # Cryptoperiods (3.7.4): every key in use is listed with its period, a metric
        # counts them by state.
        with vault.client("officer-alice") as c:
            periods = c.get("/v1/admin/keys").json()["cryptoperiods"]
        assert {p["key"]: p["state"] for p in periods} == dict.fromkeys(
            ("cofre-kek-v1", "cofre-fp-v1", "cofre-audit-v1", "pan_gcm-v1", "ff1-v1"), "ok"
        )
        assert _gauge(vault, "cofre.keys.cryptoperiod") == 5  # the first series: state ok
        hsm_provider.generate_kek(PLANTED)
        try:
            _check_planted(vault)
        finally:
            hsm_provider.destroy_key(PLANTED)
        with vault.client() as c:
            assert c.get("/readyz").status_code == 200


def _check_planted(vault: VaultServer) -> None:
    with vault.client() as c:
        ready = c.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["code"] == "hsm_key_unregistered"
    assert PLANTED in ready.json()["detail"]
    # The gauge lists the HSM's keys at most once per METRIC_CALLBACK_SECONDS (session
    # 35: a scrape flood was a flood of key listings): the bound fails only on a hang.
    deadline = time.monotonic() + 60
    while _gauge(vault, "cofre.hsm.unregistered_keys") != 1:
        assert time.monotonic() < deadline, "the planted key never showed in the gauge"
        time.sleep(0.2)
    vault.rotate_data_keys()
    with vault.client("officer-bob") as c:
        inventory = c.get("/v1/admin/keys").json()
    assert {k["kek"] for k in inventory["data_keys"]} == {"cofre-kek-v1"}
    # The inventory lists the keys in use now, not a minute ago (review 41: the retired
    # data keys stayed on its period lines after the rotation completed).
    in_use = {p["key"] for p in inventory["cryptoperiods"]}
    assert {"pan_gcm-v2", "ff1-v2"} <= in_use, in_use
    assert not {"pan_gcm-v1", "ff1-v1"} & in_use, in_use
    flagged = {k["label"]: k["registered"] for k in inventory["token_keys"]}
    assert flagged[PLANTED] is False
    assert flagged["cofre-kek-v1"] is True
