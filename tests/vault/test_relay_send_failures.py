"""Review 28 (R28-1): whatever fails in the relay's send after the reveal is an audited
outcome, never a bare 500. An encoding error of httpx (a body holding NaN or a lone
surrogate, now refused before the reveal) was not a `CofreError`: the `relay.send`
entry stood with no `relay` entry saying whether the card went upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from tests.support.fake_acquirer import FakeAcquirer
from tests.vault.conftest import relay_vault
from tests.vault.test_relay import PAN, PAYMENTS, RELAYER, _policy
from vault.errors import RelayBodyInvalid, UpstreamUnavailable
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService


@pytest.fixture
def service(
    engine: Engine, hsm_provider: HSMProvider, acquirer: FakeAcquirer
) -> Iterator[VaultService]:
    with relay_vault(engine, hsm_provider, acquirer, _policy(acquirer, "")) as svc:
        yield svc


def _entries(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT payload FROM audit_entries ORDER BY id"))
        return [json.loads(row) for row in rows.scalars()]


def test_a_failure_of_the_send_that_is_not_the_vaults_is_an_audited_outcome(
    service: VaultService, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = service.tokenize(PAYMENTS, TokenizeRequest(Pan(PAN), "pan_last4")).token

    def broken(*args: object) -> None:
        raise ValueError("Out of range float values are not JSON compliant")

    monkeypatch.setattr(service._relay_client, "send", broken)
    with pytest.raises(UpstreamUnavailable) as raised:
        service.relay(RELAYER, "acq", {"card": {"number": token}})
    assert "ValueError" in str(raised.value)
    actions = [(e["action"], e["outcome"]) for e in _entries(engine)]
    assert actions[-2:] == [("relay.send", "success"), ("relay", "failed")]
    assert _entries(engine)[-1]["details"]["error"] == "upstream_unavailable"


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), float("-inf"), "\ud800", {"k\udfff": 1}]
)
def test_a_body_json_cannot_send_is_refused_before_the_reveal(
    service: VaultService, engine: Engine, acquirer: FakeAcquirer, value: object
) -> None:
    token = service.tokenize(PAYMENTS, TokenizeRequest(Pan(PAN), "pan_last4")).token
    with pytest.raises(RelayBodyInvalid, match="cannot be sent as JSON"):
        service.relay(RELAYER, "acq", {"card": {"number": token}, "amount": value})
    actions = [(e["action"], e["outcome"]) for e in _entries(engine)]
    assert ("relay.send", "success") not in actions
    assert actions[-1] == ("relay", "failed")
    assert acquirer.received == []
