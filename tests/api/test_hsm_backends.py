"""End to end over mutual TLS, once on SoftHSM2 and once through the CloudHSM-behaviour
shim (our reading of AWS's SDK 5 documentation, not CloudHSM)."""

from __future__ import annotations

import pytest

from hsm.provider import HSMProvider
from tests.api.conftest import running_vault
from tests.support.cloudhsm_shim import HSM_BACKENDS, provider_for
from tests.support.pans import card_number


@pytest.fixture(params=HSM_BACKENDS)
def backend_provider(request: pytest.FixtureRequest) -> HSMProvider:
    return provider_for(request)


def test_tokenize_detokenize_over_mtls(
    backend_provider: HSMProvider, tmp_path_factory: pytest.TempPathFactory
) -> None:
    pan = card_number("411111", 19)
    with running_vault(tmp_path_factory.mktemp("api-backend"), backend_provider) as vault:
        with vault.client("payments") as client:
            response = client.post("/v1/tokenize", json={"pan": pan, "format": "pan_bin6_last4"})
        assert response.status_code == 200, response.text
        token = response.json()["token"]
        with vault.client("settlement") as client:
            full = client.post("/v1/detokenize", json={"token": token})
        assert full.status_code == 200
        assert full.json()["pan"] == pan
