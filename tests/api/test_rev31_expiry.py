"""Review 31, finding R31-1 (Medium): the adapter tier's stolen certificate plus any
visit to the shop's checkout turns a card number the attacker holds into the card's
stored expiry (and tells whether the shop holds the card).

The steps, each one allowed alone: (1) the attacker, holding a card number but not its
expiry (a BIN attack, a skimmed list), loads the shop's checkout and types the number
into the hosted fields; the capture is answered the token the shop's domain already
holds for that card (convergence, docs/capture.md), and, on purpose, the expiry the
shopper typed, never the stored one; (2) with the out-of-scope adapter's certificate
(`getnet-adapter`, which may read payments' tokens masked) the attacker reads that token
masked: the answer carried the expiry the shop stored. A full PAN and its expiry, put
together outside PCI scope, is what the capture answer was built not to give. An expiry
that differs from the one typed (or any, when none was typed) also says the shop held
the card. Before: the masked answer gave every caller the expiry. Fixed: an identity
outside PCI scope (`scope = "out"`) is answered `"expiry": null` by every reveal; the
relay still puts the expiry into the acquirer's request inside the vault. The same
token relayed through `getnet-authorize`, which sends month and year apart, gave the
expiry back from an acquirer that echoes the card object (two digits alone were never
withheld): both are now withheld from an object of the answer that holds the pair.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from api.pki import issue_client
from cofre.settings import CaptureSettings
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.fake_acquirer import FakeAcquirer, running_acquirer
from tests.support.policies import getnet_card_route
from tests.support.postgres import free_port

# Outside PCI scope, with every reveal route a policy may give it there.
READER = """
[identities."spiffe://cofre/checkout"]
scope = "out"
operations = ["detokenize", "detokenize_masked", "metadata"]
reveal = "masked"
read_domains = ["spiffe://cofre/payments"]
"""


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> Iterator[tuple[VaultServer, FakeAcquirer]]:
    settings = CaptureSettings(port=free_port())
    tmp = tmp_path_factory.mktemp("rev31x")
    with running_acquirer(tmp / "acquirer-pki") as acquirer:
        route = getnet_card_route(acquirer.url, acquirer.ca)  # type: ignore[attr-defined]
        with running_vault(
            tmp / "vault", hsm_provider, extra_policy=READER + route, capture=settings
        ) as v:
            issue_client(v.pki, "checkout")
            yield v, acquirer


@pytest.fixture
def vault(rig: tuple[VaultServer, FakeAcquirer]) -> VaultServer:
    return rig[0]


@pytest.mark.parametrize("typed", [{"expiry": "01/30"}, {}])
def test_a_capture_and_the_adapters_masked_read_do_not_give_a_held_cards_expiry(
    vault: VaultServer, typed: dict[str, str]
) -> None:
    card = "4000002500003155" if typed else "4000000000003220"
    with vault.client("payments") as shop:
        kept = shop.post(
            "/v1/tokenize", json={"pan": card, "format": "pan_bin6_last4", "expiry": "07/31"}
        )
    assert kept.status_code == 200, kept.text
    captured = vault.shopper_captures({"number": card, **typed})
    assert captured.status_code == 200, captured.text
    token = captured.json()["token"]
    assert token == kept.json()["token"]  # the shop's token, as designed
    with vault.client("getnet-adapter") as adapter:
        masked = adapter.post("/v1/detokenize-masked", json={"token": token})
    assert masked.status_code == 200, masked.text
    assert masked.json()["expiry"] is None, masked.json()
    with vault.client("checkout") as reader:
        answers = [
            reader.post("/v1/detokenize", json={"token": token}),
            reader.post("/v1/detokenize-masked", json={"token": token}),
            reader.post("/v1/detokenize/batch", json={"tokens": [token]}),
        ]
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert answers[0].json()["expiry"] is None
    assert answers[1].json()["expiry"] is None
    assert all(item["expiry"] is None for item in answers[2].json()["results"])


def test_in_scope_readers_still_see_the_expiry(vault: VaultServer) -> None:
    """The shop's own services (in scope) keep the expiry in their masked answers."""
    card = "5200828282828210"
    with vault.client("payments") as shop:
        token = shop.post(
            "/v1/tokenize", json={"pan": card, "format": "pan_bin6_last4", "expiry": "07/31"}
        ).json()["token"]
        own = shop.post("/v1/detokenize-masked", json={"token": token}).json()
    with vault.client("ledger") as ledger:
        read = ledger.post("/v1/detokenize", json={"token": token}).json()
    assert own["expiry"] == "2031-07"
    assert read["expiry"] == "2031-07"


def test_an_acquirer_echoing_the_card_object_gives_the_adapter_no_expiry(
    rig: tuple[VaultServer, FakeAcquirer],
) -> None:
    """R31-1 through the relay: `getnet-authorize` sends the expiry as month and year
    apart, which were never withheld (two digits alone are too common), so an acquirer
    that echoes the request's card object handed the adapter the stored expiry of the
    card a capture mapped to the token. Withheld now where one object holds both."""
    vault, acquirer = rig
    card = "4000000000001091"
    with vault.client("payments") as shop:
        kept = shop.post(
            "/v1/tokenize", json={"pan": card, "format": "pan_bin6_last4", "expiry": "07/31"}
        )
    assert kept.status_code == 200, kept.text
    captured = vault.shopper_captures({"number": card})
    token = captured.json()["token"]

    def echo(body: dict[str, Any]) -> tuple[int, Any]:
        sent = body["card"]
        year = int(sent["expiration_year"])
        return 200, {
            "status": "APPROVED",
            "card": dict(sent),
            "as_numbers": {"m": int(sent["expiration_month"]), "y": 2000 + year},
            "amount": {"value": 7, "installments": 1},  # one digit of a month alone stays
        }

    acquirer.answer = echo
    with vault.client("getnet-adapter") as adapter:
        relayed = adapter.post(
            "/v1/relay/getnet-authorize",
            json={"card": {"number": token}, "amount": "0.00", "order_id": "r31"},
        )
    assert relayed.status_code == 200, relayed.text
    assert acquirer.received[-1]["card"]["expiration_month"] == "07"
    answer = relayed.json()
    assert answer["card"].get("expiration_month") in (None, "[withheld]"), answer
    assert answer["card"].get("expiration_year") in (None, "[withheld]"), answer
    assert answer["as_numbers"] == {"m": "[withheld]", "y": "[withheld]"}, answer
    assert answer["amount"] == {"value": 7, "installments": 1}
