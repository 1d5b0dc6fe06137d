"""Every HSM test runs against SoftHSM2 and against the CloudHSM-behaviour shim."""

from __future__ import annotations

import pytest

from hsm.provider import HSMProvider
from tests.support.cloudhsm_shim import HSM_BACKENDS, provider_for


@pytest.fixture(params=HSM_BACKENDS)
def hsm_provider(request: pytest.FixtureRequest) -> HSMProvider:
    return provider_for(request)
