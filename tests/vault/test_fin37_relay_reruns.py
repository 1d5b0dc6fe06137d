"""Review rev37c's first bound, attacked (fin37): a relay body with no object where the
route puts a card detail (its cardholder name under `/billing`, say) was refused only
when the token held that detail, inside the transaction, its charge rolled back with
the group (real PostgreSQL, the vault's own group committer, measured as rev37c did:
`tests.support.groups.in_a_held_group`).

The call cost nothing, so the early check never refused the next: a certificate allowed
such a route, with one token of its domain that holds a name, reran every commit group
it reached (every other caller's operation in it run again, one savepoint each),
without limit. Whether the token held the detail was also told apart by the answer (a
refusal, or a relay sent without it). Now the body is refused before the committer
whatever the token holds (`vault.operations.relay._refuse_tokenless`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from tests.support.fake_acquirer import FakeAcquirer
from tests.support.groups import in_a_held_group
from tests.support.pans import card_number
from tests.vault.conftest import TEST_POLICY, relay_vault
from tests.vault.test_relay_card import GETNET, PAYMENTS
from vault.errors import RelayBodyInvalid
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService

ROUTE = "billing"


@pytest.fixture
def billing(
    engine: Engine, softhsm_provider: HSMProvider, acquirer: FakeAcquirer
) -> Iterator[VaultService]:
    """A vault whose route `billing` puts the card's number under `/card` and its
    cardholder name under `/billing`, an object of the body's own."""
    ca: Path = acquirer.ca  # type: ignore[attr-defined]
    policy = TEST_POLICY.replace(
        '[identities."spiffe://cofre/getnet-adapter"]\noperations = ["detokenize"]',
        '[identities."spiffe://cofre/getnet-adapter"]\noperations = ["detokenize", "relay"]',
    ) + (
        f"""
[relay_routes.{ROUTE}]
upstream = "{acquirer.url}/v1/authorize"
identities = ["spiffe://cofre/getnet-adapter"]
ca_bundle = "{ca}"

[relay_routes.{ROUTE}.card]
number = "/card/number"
cardholder_name = "/billing/name"
"""
    )
    with relay_vault(engine, softhsm_provider, acquirer, policy) as service:
        yield service


def _token(vault: VaultService, name: str | None) -> str:
    pan = Pan(card_number("5555", 37 if name is None else 38))  # two cards: no convergence
    request = TokenizeRequest(pan, "pan_bin6_last4", cardholder_name=name)
    return vault.tokenize(PAYMENTS, request).token


def _unparented(token: str) -> dict[str, Any]:
    return {"card": {"number": token}, "amount": "10.00"}  # no "/billing" object


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_detail_with_no_parent_object_never_reruns_another_callers_group(
    billing: VaultService, acquirer: FakeAcquirer
) -> None:
    token = _token(billing, "Ana Souza")
    for _ in range(2):  # free before: the second met no spent bucket either
        attacker, runs = in_a_held_group(
            billing, lambda: billing.relay(GETNET, ROUTE, _unparented(token))
        )
        with pytest.raises(RelayBodyInvalid, match="no object to hold /billing/name"):
            attacker.result(30)
        assert runs == [1], "the relay's refusal reran the innocent operation"
    assert acquirer.received == []


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_refusal_does_not_tell_whether_the_token_holds_the_detail(
    billing: VaultService, acquirer: FakeAcquirer
) -> None:
    """A token with no name was relayed (the member left out) where one with a name was
    refused: the answer told the two apart. Both are refused alike now."""
    for name in ("Ana Souza", None):
        with pytest.raises(RelayBodyInvalid, match="no object to hold /billing/name"):
            billing.relay(GETNET, ROUTE, _unparented(_token(billing, name)))
    assert acquirer.received == []


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_body_with_the_object_is_relayed_with_the_detail(
    billing: VaultService, acquirer: FakeAcquirer
) -> None:
    """Held: the route's detail goes into the object the body has."""
    token = _token(billing, "Ana Souza")
    body = {"card": {"number": token}, "billing": {"zip": "01310"}}
    assert billing.relay(GETNET, ROUTE, body).status == 200
    assert acquirer.received[-1]["billing"] == {"zip": "01310", "name": "Ana Souza"}
