"""Review 31b, an attack on R31-1's relay fix: the relay withholds from an upstream's
answer the expiry it sent only in the layout it sent it in (`withhold_sent`), and a
month and year sent apart only where one object echoes both as members
(`withhold_month_year`). Acquirers echo the card's expiry in a layout of their own: the
month and year a route sent apart came back as ``"07/31"``, ``"07/2031"`` or
``"2031-07"`` in one string, or inside a message, and an expiry sent as ``MM/YY`` came
back as ``YYYY-MM``: each reached the out-of-scope adapter joined to the card the
capture mapped to its token. Fixed: wherever the vault sent the expiry (whole or apart),
its ``MM/YY``, ``MM/YYYY`` and ``YYYY-MM`` layouts are withheld from the answer too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.fake_acquirer import FakeAcquirer, running_acquirer
from tests.support.policies import getnet_card_route

# The same upstream, the expiry sent whole (`MM/YY`).
WHOLE = """
[relay_routes.getnet-whole]
upstream = "{url}/v1/authorize"
identities = ["spiffe://cofre/getnet-adapter"]
ca_bundle = "{ca}"
timeout_seconds = 5

[relay_routes.getnet-whole.card]
number = "/card/number"
expiry = "/card/expiration"
"""

ECHOES = ["07/31", "07/2031", "2031-07", "card 07/31 declined", "exp=2031-07;"]


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> Iterator[tuple[VaultServer, FakeAcquirer]]:
    tmp = tmp_path_factory.mktemp("rev31b-relay")
    with running_acquirer(tmp / "acquirer-pki") as acquirer:
        url, ca = acquirer.url, acquirer.ca  # type: ignore[attr-defined]
        routes = getnet_card_route(url, ca) + WHOLE.format(url=url, ca=ca)
        with running_vault(tmp / "vault", hsm_provider, extra_policy=routes) as v:
            yield v, acquirer


def _token(vault: VaultServer, card: str) -> str:
    with vault.client("payments") as shop:
        kept = shop.post(
            "/v1/tokenize", json={"pan": card, "format": "pan_bin6_last4", "expiry": "07/31"}
        )
    assert kept.status_code == 200, kept.text
    return str(kept.json()["token"])


def _echo(_: dict[str, Any]) -> tuple[int, Any]:
    return 200, {
        "status": "APPROVED",
        "echoes": list(ECHOES),
        "card": {"expiry": "07/31"},
        "amount": {"value": "0.00", "code": "07"},  # a month alone is kept
    }


@pytest.mark.parametrize(
    ("route", "card"),
    [("getnet-authorize", "4000000000001091"), ("getnet-whole", "5200828282828210")],
)
def test_an_expiry_echoed_in_another_layout_is_withheld(
    rig: tuple[VaultServer, FakeAcquirer], route: str, card: str
) -> None:
    vault, acquirer = rig
    token = _token(vault, card)
    acquirer.answer = _echo
    with vault.client("getnet-adapter") as adapter:
        relayed = adapter.post(
            f"/v1/relay/{route}",
            json={"card": {"number": token}, "amount": "0.00", "order_id": "r31b"},
        )
    assert relayed.status_code == 200, relayed.text
    answer = relayed.json()
    shown = repr(answer)
    for echoed in ("07/31", "07/2031", "2031-07"):
        assert echoed not in shown, answer
    assert answer["echoes"][3] == "card [withheld] declined", answer
    assert answer["amount"] == {"value": "0.00", "code": "07"}, answer
