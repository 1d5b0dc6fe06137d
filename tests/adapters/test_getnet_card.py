"""The Getnet adapter authorizes with a token only; the vault's relay route puts the
card in (number, expiry, security code, name at the route's JSON pointers). Over real
mTLS: the fake acquirer receives the number, the expiry and the code exactly once; a
second authorization with the same token carries no code; nothing of the card (and no
code) is in what the adapters held, logged or received, nor anywhere in `adapters/`."""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from adapters.client import CofreClient
from adapters.services import GetnetRoutingAdapter, LedgerAdapter, PaymentsAdapter
from api.pki import ensure_dev_pki
from hsm.keys import KeyHierarchy
from hsm.provider import provider_from_settings
from tests.api.conftest import VaultServer, running_vault
from tests.support.codes import shows_code
from tests.support.fake_acquirer import FakeAcquirer
from tests.support.leakscan import find_leaks
from tests.support.policies import TEST_IDENTITIES, getnet_card_route
from tests.support.softhsm import SoftHSMToken, destroy_code_epochs

PAN = "5555555555554444"
CODE = "7391"
ADAPTERS = Path(__file__).resolve().parents[2] / "adapters"


@pytest.fixture(scope="module")
def getnet(
    tmp_path_factory: pytest.TempPathFactory, softhsm_token: SoftHSMToken
) -> Iterator[tuple[VaultServer, FakeAcquirer]]:
    tmp = tmp_path_factory.mktemp("getnet-card")
    pki = ensure_dev_pki(tmp / "pki", identities=TEST_IDENTITIES)
    acquirer = FakeAcquirer(cert=pki.server_cert, key=pki.server_key)
    acquirer.start()
    routes = getnet_card_route(acquirer.url, pki.ca)
    # The session's second token: the security-code epoch keys this vault makes never
    # sit beside the other test vaults' keys.
    provider = provider_from_settings(
        softhsm_token.settings(token_label=softhsm_token.label + "-rot")
    )
    KeyHierarchy(provider).initialize()
    try:
        with running_vault(tmp, provider, extra_policy=routes) as vault:
            yield vault, acquirer
    finally:
        acquirer.stop()
        destroy_code_epochs(provider)
        provider.close()


def _client(vault: VaultServer, name: str) -> CofreClient:
    pki = vault.pki
    return CofreClient(vault.url, cert=pki.client_cert(name), key=pki.client_key(name), ca=pki.ca)


def test_the_acquirer_gets_number_expiry_and_code_once(
    getnet: tuple[VaultServer, FakeAcquirer], caplog: pytest.LogCaptureFixture
) -> None:
    vault, acquirer = getnet
    caplog.set_level(logging.DEBUG)
    # In scope (the capture listener or payments' tokenize): the card and its code once.
    with vault.client("payments") as c:
        answer = c.post(
            "/v1/tokenize",
            json={
                "pan": PAN,
                "format": "pan_bin6_last4",
                "expiry": "11/31",
                "cardholder_name": "Ana Souza",
                "security_code": CODE,
            },
        )
    assert answer.status_code == 200, answer.text
    token = answer.json()["token"]
    # Out of scope: the adapters hold the token only.
    with _client(vault, "getnet-adapter") as getnet_client, _client(vault, "ledger") as ledger:
        payments = PaymentsAdapter(GetnetRoutingAdapter(getnet_client), LedgerAdapter(ledger))
        first = payments.pay("order-1", token, Decimal("19.90"))
        second = payments.pay("order-2", token, Decimal("5.00"))
    assert first.approved
    assert second.approved
    cards = [body["card"] for body in acquirer.received[-2:]]
    assert cards[0] == {
        "number": PAN,
        "expiration_month": "11",
        "expiration_year": "31",
        "security_code": CODE,
        "cardholder_name": "Ana Souza",
    }
    assert "security_code" not in cards[1]
    assert cards[1]["number"] == PAN
    assert [c.get("security_code") for c in cards] == [CODE, None]
    # The leak scan: what the adapters held, logged and received has no card and no code.
    held = repr(first) + repr(second) + caplog.text
    assert find_leaks(held.encode(), [PAN], allowed=[token]) == []
    assert not shows_code(held, CODE)
    # The audit log shows each step, the code as used then none, never its value.
    with vault.runtime.engine.connect() as c:
        payloads = [
            json.loads(p) for p in c.exec_driver_sql("SELECT payload FROM audit_entries").scalars()
        ]
    steps = [(p["action"], p["details"].get("security_code")) for p in payloads]
    assert ("security_code.hold", None) in steps
    assert [s for s in steps if s[0] == "relay.send"] == [
        ("relay.send", "used"),
        ("relay.send", "none"),
    ]
    assert not any(shows_code(json.dumps(p["details"]), CODE) for p in payloads)


def test_no_card_number_or_code_anywhere_in_adapters() -> None:
    """`adapters/` never names a card number or a code as data: the only place the word
    ``security_code`` appears is the capture-session *rule* (optional, required,
    forbidden) a payments service asks the vault for."""
    forbidden = {"pan", "cvv", "cvv2", "cvc", "cvc2", "card_number", "securityCode"}
    for path in sorted(ADAPTERS.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in forbidden, f"{path.name}:{node.lineno}"
                if node.value == "security_code":
                    assert path.name == "client.py", f"{path.name}:{node.lineno}"
        for digits in (PAN, "4111111111111111"):
            assert digits not in path.read_text()
