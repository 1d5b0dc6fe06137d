"""With a CRL configured, a revoked client certificate fails the TLS handshake."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from api.pki import revoke_clients
from hsm.provider import HSMProvider
from tests.api.conftest import running_vault


def test_revoked_client_is_refused(tmp_path: Path, hsm_provider: HSMProvider) -> None:
    with running_vault(
        tmp_path,
        hsm_provider,
        crl=lambda pki: revoke_clients(pki, ["ledger"], tmp_path / "crl.pem"),
    ) as vault:
        with vault.client("payments") as c:
            assert c.get("/healthz").status_code == 200
        with vault.client("ledger") as c, pytest.raises(httpx.TransportError):
            c.get("/healthz")
