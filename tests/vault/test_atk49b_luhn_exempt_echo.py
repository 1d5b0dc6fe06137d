"""atk49b: a private-label card (a range the policy exempts from Luhn) went back to the
adapter whole in every echo shape the relay learnt since review 29b.

The checks that find a sent card the PAN detector does not (`withhold_split_pans`,
`withhold_echoed_pans`, `withhold_encoded_pans`: a card split over an object's values,
spread over texts or a list, separated by hyphens, base64 of the request, a hex dump,
gzip...) look for "any Luhn-valid number that looks like a sent one as far as its
masked reveal shows" (`vault.relay._occurrences`), so that an answer never tells a
caller which of its guesses was the card. But a card in a `luhn_exempt` range fails
Luhn by definition (private-label cards carry no check digit): the card the relay sent
never matches its own shape, and every such echo of it reaches the caller in clear.
Only the plain PAN detector's starring of a whole digit run is left.

The holder of the adapter's certificate (outside PCI scope) relays a private-label card
to an acquirer that echoes the request in its error (base64 of the request, the card
split into BIN and rest, the groups in a list): the answer carries the whole card.

What should hold: a sent card is withheld in these shapes whether or not it passes
Luhn; the shape rule stays blind to the hidden digits (for a card that fails Luhn,
every number of its shape is withheld), so no guess is told apart.

Run against the real HTTPS fake acquirer, the real SoftHSM token and SQLite.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from tests.support.fake_acquirer import FakeAcquirer
from tests.support.policies import getnet_card_route
from tests.support.softhsm import destroy_code_epochs
from tests.vault.conftest import TEST_POLICY, relay_vault
from tests.vault.test_relay_card import GETNET, PAYMENTS
from vault.pan import Pan, luhn_valid
from vault.relay import WITHHELD_DETAIL
from vault.service import TokenizeRequest, VaultService

pytestmark = [
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True),
]

# A private-label card of the exempt range: fails Luhn.
PRIVATE = "6000123456789010"


@pytest.fixture
def private_relay(
    engine: Engine, rotation_provider: HSMProvider, acquirer: FakeAcquirer
) -> Iterator[VaultService]:
    ca: Path = acquirer.ca  # type: ignore[attr-defined]
    policy = (
        TEST_POLICY.replace(
            '[identities."spiffe://cofre/getnet-adapter"]\noperations = ["detokenize"]',
            '[identities."spiffe://cofre/getnet-adapter"]\noperations = ["detokenize", "relay"]',
        )
        + getnet_card_route(acquirer.url, ca)
        + f"""
[relay_routes.plain]
upstream = "{acquirer.url}/v1/authorize"
identities = ["spiffe://cofre/getnet-adapter"]
ca_bundle = "{ca}"

[relay_routes.plain.card]
number = "/card/number"

[luhn_exempt.acme-store-card]
prefixes = ["6000"]
"""
    )
    with relay_vault(engine, rotation_provider, acquirer, policy) as service:
        yield service
    destroy_code_epochs(rotation_provider)


def _b64_request(got: dict[str, Any]) -> Any:
    return {"status": "DECLINED", "debug": base64.b64encode(json.dumps(got).encode()).decode()}


def _split(got: dict[str, Any]) -> Any:
    card = got["card"]["number"]
    return {"status": "DECLINED", "card": {"bin": card[:6], "rest": card[6:]}}


def _hyphens(got: dict[str, Any]) -> Any:
    card = got["card"]["number"]
    return {"status": "DECLINED", "ref": f"{card[:8]}-{card[8:]}"}


def _groups(got: dict[str, Any]) -> Any:
    card = got["card"]["number"]
    return {"status": "DECLINED", "groups": [card[:8], card[8:]]}


ECHOES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "the request in base64": _b64_request,
    "split over an object": _split,
    "two groups joined by a hyphen": _hyphens,
    "two groups in a list": _groups,
}


@pytest.mark.parametrize("echo", sorted(ECHOES))
def test_a_private_label_card_echoed_is_withheld(
    private_relay: VaultService, acquirer: FakeAcquirer, echo: str
) -> None:
    assert not luhn_valid(PRIVATE)
    token = private_relay.tokenize(PAYMENTS, TokenizeRequest(Pan(PRIVATE), "pan_bin6_last4"))
    acquirer.answer = lambda got: (402, ECHOES[echo](got))
    answer = private_relay.relay(GETNET, "plain", {"card": {"number": token.token}})
    assert acquirer.received[-1]["card"]["number"] == PRIVATE
    text = json.dumps(answer.body)
    digits = "".join(c for c in text if c.isdigit())
    decoded = ""
    if echo == "the request in base64" and answer.body["debug"] != WITHHELD_DETAIL:
        decoded = base64.b64decode(answer.body["debug"]).decode()
    assert PRIVATE not in digits, f"the private-label card went back to the adapter: {text}"
    assert PRIVATE not in decoded, f"the private-label card went back in base64: {text}"
    assert WITHHELD_DETAIL in text
