"""Review 34: an upstream's status that HTTP gives no body (204 No Content, 205 Reset
Content, 304 Not Modified) was relayed with the masked answer as its body. Uvicorn then
failed the response in the middle ("Response content longer than Content-Length", an
exception in the ASGI application logged as an error, the connection cut), and a 205
went out with a body HTTP forbids. An acquirer's void or cancel endpoint answering 204
is ordinary. The vault now answers such a status without a body, and the adapter's
client gives back None for it instead of failing to parse JSON (and the Getnet adapter
reads it as not approved instead of failing on None)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adapters.client import CofreClient
from adapters.services import GetnetRoutingAdapter
from hsm.provider import HSMProvider
from tests.api.conftest import running_vault
from tests.api.test_relay_answer_encoding_attacks import _policy, relay_card
from tests.support.fake_acquirer import FakeAcquirer

BODILESS = (204, 205, 304)


def test_an_upstream_status_without_a_body_is_relayed_without_one(
    tmp_path: Path,
    hsm_provider: HSMProvider,
    acquirer: FakeAcquirer,
    capfd: pytest.CaptureFixture[str],
) -> None:
    status: list[int] = []

    def answer(body: dict[str, Any]) -> tuple[int, Any]:
        return status[-1], {"card": body["card"], "status": "VOIDED"}

    acquirer.answer = answer
    with running_vault(tmp_path, hsm_provider, extra_policy=_policy(acquirer)) as vault:
        card = relay_card(vault)
        answers: dict[int, tuple[int, bytes]] = {}
        for code in BODILESS:
            status.append(code)
            with vault.client("checkout") as checkout:
                relayed = checkout.post("/v1/relay/acq", json={"card": card})
            answers[code] = (relayed.status_code, relayed.content)
        pki = vault.pki
        adapter = CofreClient(
            vault.url, cert=pki.client_cert("checkout"), key=pki.client_key("checkout"), ca=pki.ca
        )
        with adapter:
            status.append(204)
            through_adapter = adapter.relay("acq", {"card": card})
            getnet = GetnetRoutingAdapter(adapter)
            getnet.route = "acq"
            authorization = getnet.authorize(card["number"], Decimal("1.00"), "BRL", "o-1")
    errors = capfd.readouterr().err
    assert answers == {code: (code, b"") for code in BODILESS}
    assert through_adapter == (204, None)
    assert not authorization.approved
    assert authorization.raw == {}
    assert "Exception in ASGI application" not in errors
