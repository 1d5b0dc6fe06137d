"""The relay answers an OUT-OF-SCOPE adapter with the
acquirer's body after `mask_pan_values`; an acquirer that echoes the card in a shape the
detector misses hands the PAN to the out-of-scope identity. docs/api.md: "PANs in the
answer are found in every representation"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from tests.support.fake_acquirer import FakeAcquirer
from tests.vault.conftest import TEST_POLICY, relay_vault
from vault.pan import Pan
from vault.service import CallContext, TokenizeRequest, VaultService

PAN = "5555555555554444"
PAYMENTS = CallContext("spiffe://cofre/payments", "req-payments")
ADAPTER = CallContext("spiffe://cofre/oos-adapter", "req-relay-oos")


@pytest.fixture
def oos_relay(
    engine: Engine, hsm_provider: HSMProvider, acquirer: FakeAcquirer
) -> Iterator[VaultService]:
    ca: Path = acquirer.ca  # type: ignore[attr-defined]
    policy = (
        TEST_POLICY
        + f"""
[identities."spiffe://cofre/oos-adapter"]
scope = "out"
operations = ["relay", "detokenize_masked"]
reveal = "masked"
read_domains = ["spiffe://cofre/payments"]

[relay_routes.acq]
upstream = "{acquirer.url}/v1/authorize"
identities = ["spiffe://cofre/oos-adapter"]
detokenize = ["/card/number"]
ca_bundle = "{ca}"
timeout_seconds = 5
"""
    )
    with relay_vault(engine, hsm_provider, acquirer, policy) as svc:
        yield svc


SHAPES: dict[str, Any] = {
    "two 8-digit groups": PAN[:8] + " " + PAN[8:],
    "mixed separators": f"{PAN[:4]} {PAN[4:8]}-{PAN[8:12]} {PAN[12:]}",
    "hex word": "a" + PAN + "bcdef0123456789",
    "Arabic-Indic digits": "".join(chr(0x660 + int(d)) for d in PAN),
    "list of 8-digit strings": [PAN[:8], PAN[8:]],
}


@pytest.mark.parametrize("shape", SHAPES.keys())
def test_relay_answer_to_an_out_of_scope_adapter_never_holds_the_pan(
    oos_relay: VaultService, acquirer: FakeAcquirer, shape: str
) -> None:
    token = oos_relay.tokenize(PAYMENTS, TokenizeRequest(Pan(PAN), "pan_last4")).token
    acquirer.answer = lambda body: (200, {"status": "APPROVED", "echo": SHAPES[shape]})
    result = oos_relay.relay(ADAPTER, "acq", {"card": {"number": token}})
    text = json.dumps(result.body, ensure_ascii=False)
    digits = "".join(str(int(c)) for c in text if c.isdecimal())
    leaked = PAN in digits  # kept out of the failure message
    assert not leaked
