"""A relay raced against a token's delete across vault nodes (session 31's review): the
relay reads the tokens it reveals, and a delete on another node must not be answered
between that read and the relay's commit, or the PAN goes upstream, its ``relay.send``
entry after the delete's.

As in tests/vault/test_token_lifecycle_races.py, the order is forced on PostgreSQL with
no sleep: the relay reveals one token at a detokenize pointer, then takes the held
security code of the card at its card pointer, and another session holds that code's
row, so the relay waits there after every read of the first token; the delete of that
first token comes while it waits. On SQLite the calls run one after the other, in
either order, and the test checks what must hold whichever ran first.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from tests.support.fake_acquirer import FakeAcquirer
from tests.support.locks import HeldRow, answered_while_held
from tests.support.policies import vault_on
from tests.support.softhsm import destroy_code_epochs
from tests.vault.conftest import TEST_POLICY, relay_vault
from tests.vault.test_token_lifecycle_races import (
    _answered_before_its_end,
    _trail,
)
from vault.card import SecurityCode
from vault.errors import TokenNotFound
from vault.pan import Pan
from vault.relay import RelayResult
from vault.service import CallContext, TokenizeRequest, VaultService

PAYMENTS = CallContext("spiffe://cofre/payments", "req-payments")
RELAYER = CallContext("spiffe://cofre/getnet-adapter", "req-relay")
CARD = "5555555555554444"
OTHER = "4111111111111111"


def _policy(acquirer: FakeAcquirer) -> str:
    """TEST_POLICY with the getnet adapter relaying on `race`: a token at
    ``/other/number`` revealed, then the card at ``/card/number`` with its held code."""
    ca: Path = acquirer.ca  # type: ignore[attr-defined]
    return TEST_POLICY.replace(
        '[identities."spiffe://cofre/getnet-adapter"]\noperations = ["detokenize"]',
        '[identities."spiffe://cofre/getnet-adapter"]\noperations = ["detokenize", "relay"]',
    ) + (
        f"""
[relay_routes.race]
upstream = "{acquirer.url}/v1/authorize"
identities = ["spiffe://cofre/getnet-adapter"]
detokenize = ["/other/number"]
ca_bundle = "{ca}"
timeout_seconds = 5

[relay_routes.race.card]
number = "/card/number"
security_code = "/card/security_code"
"""
    )


@pytest.fixture
def nodes(
    engine: Engine, rotation_provider: HSMProvider, acquirer: FakeAcquirer
) -> Iterator[tuple[VaultService, VaultService]]:
    """Two vault nodes on one database: the first relays to `acquirer`."""
    policy = _policy(acquirer)
    with relay_vault(engine, rotation_provider, acquirer, policy) as one:
        two = vault_on(engine, rotation_provider, policy)
        try:
            yield one, two
        finally:
            two.close()
    destroy_code_epochs(rotation_provider)


class _HeldCode(HeldRow):
    """The held security code of `token_id` locked by another session (PostgreSQL) until
    `release`: a relay taking it waits there, after its reads of the route's tokens."""

    def __init__(self, engine: Engine, token_id: str) -> None:
        super().__init__(
            engine,
            "SELECT token_id FROM security_codes WHERE token_id = :i FOR UPDATE",
            {"i": token_id},
        )


def test_finding_a_relay_never_sends_a_pan_after_its_delete(
    nodes: tuple[VaultService, VaultService], engine: Engine, acquirer: FakeAcquirer
) -> None:
    """A relay reads the token at its detokenize pointer (without a lock) and waits to
    commit its `relay.send` entries; another node deletes that token meanwhile and is
    answered. The relay then sent the deleted token's PAN upstream, its entry after the
    delete's. Fix: the relay share-locks the rows it reveals (`_live_row(shared=True)`),
    as a detokenize does: a delete that comes later waits for the relay's commit, and
    one that came first is seen (nothing is sent)."""
    one, two = nodes
    card = one.tokenize(
        PAYMENTS, TokenizeRequest(Pan(CARD), "pan_bin6_last4", security_code=SecurityCode("739"))
    )
    other = one.tokenize(PAYMENTS, TokenizeRequest(Pan(OTHER), "card_random"))
    body: dict[str, Any] = {
        "other": {"number": other.token},
        "card": {"number": card.token},
        "amount": "10.00",
    }
    # The relay reads `other`, then waits to take the card's code.
    relayed, deleted, delete_first = answered_while_held(
        _HeldCode(engine, card.token_id),
        lambda: one.relay(RELAYER, "race", body),
        lambda: two.delete(PAYMENTS, other.token),
    )
    assert deleted is True, deleted
    trail = _trail(engine, other.token_id)
    _answered_before_its_end(trail)
    sent = [b["other"]["number"] for b in acquirer.received]
    if delete_first:  # answered "deleted" first: the PAN never goes upstream after it
        assert isinstance(relayed, TokenNotFound), relayed
    if isinstance(relayed, TokenNotFound):
        assert sent == [], "a deleted token's PAN went upstream"
    else:  # before the delete
        assert isinstance(relayed, RelayResult), relayed
        assert sent == [OTHER]
        assert trail[-1] == ("delete", "shredded"), trail
