"""Session 40: a cardholder name past ASCII echoed transliterated (``JOAO CONCEICAO`` for
``João Conceição``) went back to the adapter: only the name as sent was looked for.

Against the real HTTPS fake acquirer, with the real SoftHSM token and database.
"""

from __future__ import annotations

import base64
import json

import pytest

from tests.support.fake_acquirer import FakeAcquirer
from tests.vault.test_relay40_dumps import PAN, base64_or_empty
from tests.vault.test_relay_card import GETNET, PAYMENTS, _body, relay
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService

__all__ = ["relay"]  # the fixture, imported for the tests here


NAME = "João Conceição"


@pytest.mark.parametrize(
    "shape",
    ["JOAO CONCEICAO", "Joao Conceicao", "CONCEICAO/JOAO", "base64 Joao Conceicao"],
)
def test_a_name_echoed_transliterated_is_withheld(
    relay: VaultService, acquirer: FakeAcquirer, shape: str
) -> None:
    """Low. The card object echoed with its name in ASCII (an acquirer's fields take no
    accents, a magnetic stripe's SURNAME/GIVEN): only the name as sent was looked for."""
    request = TokenizeRequest(Pan(PAN), "pan_bin6_last4", expiry="11/31", cardholder_name=NAME)
    token = relay.tokenize(PAYMENTS, request).token
    echoed = shape.removeprefix("base64 ")
    if shape.startswith("base64 "):
        echoed = base64.b64encode(json.dumps({"holder": echoed}).encode()).decode()
    acquirer.answer = lambda got: (402, {"holder": echoed, "status": "DENIED"})
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    assert acquirer.received[-1]["card"]["cardholder_name"] == NAME
    holder = answer.body["holder"]
    shown = (holder + base64_or_empty(holder)).upper()  # what the adapter reads there
    assert "JOAO" not in shown, answer.body
    assert "CONCEICAO" not in shown, answer.body
    assert answer.body["status"] == "DENIED"
