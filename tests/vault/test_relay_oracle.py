"""The relay's `response_tokenize` stores the card an upstream answers with, in the
relaying identity's domain, and answers its token. That is a tokenize: it must cost
what a tokenize costs (a rate unit per card, and the oracle guard's count for a
convergent format), or an identity that may not tokenize, outside PCI scope, gets
tokens of cards of its choosing whenever an upstream echoes what the relay body
carried, and can compare them with a token it holds: the tokenize oracle, unguarded
(review 26 left this as Low; this is the attack).

Past the guard or the rate limit the card is masked in the answer like any other
PAN: the call has already gone upstream (an authorization may be approved), so its
answer is still given, only without a token."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from tests.support.fake_acquirer import FakeAcquirer
from tests.vault.conftest import oos_relay_policy, relay_vault
from vault.pan import Pan
from vault.service import CallContext, TokenizeRequest, VaultService

PAN = "5555555555554444"
PAYMENTS = CallContext("spiffe://cofre/payments", "req-payments")
RELAYER = CallContext("spiffe://cofre/oos-relayer", "req-relay-oracle")


def _guesses(n: int) -> list[str]:
    """`n` Luhn-valid cards with PAN's BIN and last four: one oracle bucket."""
    found = []
    for middle in range(10**6):
        card = f"{PAN[:6]}{middle:06d}{PAN[-4:]}"
        if Pan(card).luhn_valid() and card != PAN:
            found.append(card)
            if len(found) == n:
                return found
    raise AssertionError("unreachable")


@pytest.fixture
def guarded_relay(
    engine: Engine, hsm_provider: HSMProvider, acquirer: FakeAcquirer
) -> Iterator[VaultService]:
    policy = oos_relay_policy(
        acquirer,
        RELAYER.identity,
        limits="oracle_guard = { max_pans_per_bucket = 3 }",
        response_tokenize='{ "/account/number" = "pan_bin6_last4" }',
    )
    with relay_vault(engine, hsm_provider, acquirer, policy) as svc:
        yield svc


def test_an_upstream_echo_is_no_tokenize_oracle_past_the_guard(
    guarded_relay: VaultService, acquirer: FakeAcquirer, engine: Engine
) -> None:
    token = guarded_relay.tokenize(PAYMENTS, TokenizeRequest(Pan(PAN), "pan_last4")).token
    guesses = _guesses(8)
    answered: list[Any] = []
    for guess in guesses:
        # The upstream echoes what the attacker's body carried at the tokenized pointer.
        acquirer.answer = lambda body, g=guess: (200, {"account": {"number": g}})
        result = guarded_relay.relay(RELAYER, "acq", {"card": {"number": token}})
        assert result.status == 200
        answered.append(result.body["account"]["number"])
    tokens = [a for a in answered if "*" not in a]
    masked = [a for a in answered if "*" in a]
    # The guard's three different cards of one BIN and last four get tokens; the rest
    # only their masked number, as any PAN in an answer.
    assert len(tokens) == 3
    assert masked == ["555555******4444"] * 5
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT payload FROM audit_entries ORDER BY id")
        ).scalars()
        outcomes = [
            json.loads(r)["details"]
            for r in rows
            if json.loads(r)["action"] == "relay" and json.loads(r)["actor"] == RELAYER.identity
        ]
    # The relay outcome says why the card was not tokenized.
    assert [d.get("response_tokenize") for d in outcomes].count("oracle_suspected") == 5
