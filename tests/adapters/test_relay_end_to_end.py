"""payments -> Getnet adapter -> vault relay -> fake acquirer -> ledger, over real mTLS:
the acquirer receives the PAN; the adapter tier only ever holds tokens and masked PANs."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from adapters.client import CofreClient
from adapters.errors import TokenUnknown, UpstreamFailed, VaultDenied, VaultRejectedInput
from adapters.services import GetnetRoutingAdapter, LedgerAdapter, PaymentsAdapter, StoreAdapter
from api.pki import DevPKI, ensure_dev_pki
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.fake_acquirer import FakeAcquirer
from tests.support.leakscan import find_leaks
from tests.support.postgres import free_port

PAN = "5555555555554444"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def relay_env(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> Iterator[tuple[VaultServer, FakeAcquirer]]:
    tmp = tmp_path_factory.mktemp("relay")
    pki = ensure_dev_pki(tmp / "pki", identities=("payments", "ledger", "store", "getnet-adapter"))
    acquirer = FakeAcquirer(cert=pki.server_cert, key=pki.server_key)
    acquirer.start()
    closed = free_port()
    routes = f"""
[relay_routes.getnet-authorize]
upstream = "{acquirer.url}/v1/authorize"
identities = ["spiffe://cofre/getnet-adapter"]
detokenize = ["/card/number"]
response_tokenize = {{ "/card/number" = "pan_bin6_last4" }}
ca_bundle = "{pki.ca}"
timeout_seconds = 2

[relay_routes.getnet-down]
upstream = "https://127.0.0.1:{closed}/v1/authorize"
identities = ["spiffe://cofre/getnet-adapter"]
detokenize = ["/card/number"]
ca_bundle = "{pki.ca}"
timeout_seconds = 2
"""
    with running_vault(tmp, hsm_provider, extra_policy=routes) as vault:
        yield vault, acquirer
    acquirer.stop()


def _tokenize_in_scope(vault: VaultServer, pan: str, token_format: str) -> str:
    """Tokenize as the in-scope payments service does: `CofreClient` has no tokenize
    (an adapter never holds a PAN)."""
    with vault.client("payments") as c:
        response = c.post("/v1/tokenize", json={"pan": pan, "format": token_format})
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def _client(vault: VaultServer, name: str) -> CofreClient:
    pki: DevPKI = vault.pki
    return CofreClient(vault.url, cert=pki.client_cert(name), key=pki.client_key(name), ca=pki.ca)


def test_payment_flow_keeps_pans_out_of_the_adapter_tier(
    relay_env: tuple[VaultServer, FakeAcquirer], caplog: pytest.LogCaptureFixture
) -> None:
    vault, acquirer = relay_env
    caplog.set_level(logging.DEBUG)
    # The card arrives once, at the tokenizing edge inside PCI scope (card entry posts
    # straight to it); the adapters never see it.
    card_token = _tokenize_in_scope(vault, PAN, "pan_bin6_last4")
    with (
        _client(vault, "store") as store_client,
        _client(vault, "getnet-adapter") as getnet_client,
        _client(vault, "ledger") as ledger_client,
    ):
        store = StoreAdapter(store_client)
        shown = store.save_card("customer-1", card_token)
        ledger = LedgerAdapter(ledger_client)
        payments = PaymentsAdapter(GetnetRoutingAdapter(getnet_client), ledger)
        authorization = payments.pay("order-42", card_token, Decimal("19.90"))
    assert authorization.approved
    assert authorization.authorization_code == "A1B2C3"
    # The acquirer got the real PAN...
    assert acquirer.received[-1]["card"]["number"] == PAN
    # ...the adapter got it back tokenized, and the echo in the message masked.
    assert authorization.card_token is not None
    assert authorization.card_token != PAN
    assert authorization.raw["message"] == "approved for card 555555******4444"
    assert shown == "555555******4444"
    assert ledger.entries[0].masked_pan == "555555******4444"
    captured = repr(authorization) + repr(ledger.entries) + repr(store.cards) + caplog.text
    with vault.runtime.engine.connect() as connection:
        tokens = list(connection.execute(sa.text("SELECT token FROM tokens")).scalars())
        relays = (
            connection.execute(
                sa.text(
                    'SELECT payload FROM audit_entries WHERE payload LIKE \'%"action":"relay"%\''
                )
            )
            .scalars()
            .all()
        )
    assert find_leaks(captured.encode(), [PAN], allowed=tokens) == []
    assert any('"outcome":"success"' in r and "getnet-authorize" in r for r in relays)


def test_relay_to_a_route_not_allowed_is_refused_and_audited(
    relay_env: tuple[VaultServer, FakeAcquirer],
) -> None:
    vault, acquirer = relay_env
    before = len(acquirer.received)
    token = _tokenize_in_scope(vault, PAN, "pan_bin6_last4")
    with _client(vault, "getnet-adapter") as client:
        with pytest.raises(VaultDenied) as info:
            client.relay("evil-upstream", {"card": {"number": token}})
        assert info.value.status == 403
    with _client(vault, "payments") as client, pytest.raises(VaultDenied):
        client.relay("getnet-authorize", {"card": {"number": token}})
    assert len(acquirer.received) == before
    with vault.runtime.engine.connect() as connection:
        denied = connection.execute(
            sa.text(
                'SELECT count(*) FROM audit_entries WHERE payload LIKE \'%"action":"relay"%\' '
                'AND payload LIKE \'%"outcome":"denied"%\''
            )
        ).scalar_one()
    assert denied >= 2


def test_upstream_timeout_is_504_and_loses_nothing(
    relay_env: tuple[VaultServer, FakeAcquirer],
) -> None:
    vault, acquirer = relay_env
    token = _tokenize_in_scope(vault, PAN, "pan_last4")
    acquirer.delay_seconds = 3
    try:
        with _client(vault, "getnet-adapter") as client:
            started = time.monotonic()
            with pytest.raises(UpstreamFailed) as info:
                client.relay("getnet-authorize", {"card": {"number": token}})
            assert time.monotonic() - started < 10
        assert info.value.status == 504
        assert info.value.code == "upstream_timeout"
    finally:
        acquirer.delay_seconds = 0
    with _client(vault, "ledger") as client:
        assert client.detokenize_masked(token) == "555555******4444"
    with _client(vault, "getnet-adapter") as client:
        with pytest.raises(UpstreamFailed) as down:
            client.relay("getnet-down", {"card": {"number": token}})
        assert down.value.status == 502
        with pytest.raises(VaultRejectedInput) as bad:
            client.relay("getnet-authorize", {"card": {}})
        assert bad.value.code == "invalid_relay_body"
        with pytest.raises(TokenUnknown):
            client.relay("getnet-authorize", {"card": {"number": "0000000000000000"}})


def test_import_linter_forbids_adapters_importing_vault() -> None:
    probe = REPO / "adapters" / "_contract_probe.py"
    probe.write_text('"""Temporary: proves the scope contract is enforced."""\nimport vault.pan\n')
    try:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        probe.unlink()
    assert result.returncode != 0
    assert "adapters stay outside PCI scope" in result.stdout
    assert "adapters._contract_probe -> vault.pan" in result.stdout
