"""Review of session 37's deferred charges (rev37c): a keyed charge on a spent bucket
(the capture listener's per-address and per-session limits, which anyone on the
internet reaches without a certificate) must not reach the commit group, where its
refusal rolls back the whole group and runs every other caller's operation again, one
savepoint each (real PostgreSQL, the vault's own group committer).

An identity's calls are refused before the committer once its bucket is spent (the
early check, `vault.operations._early`): docs/threat-model.md bounds the reruns a
certificate can cause to its bucket's room per worker per second. `charge_rate` had no
early check, so every request from an address whose per-address bucket is spent
reached the committer: an anonymous client at one address sending page loads or
captures past its limit made every group it landed in run twice, in-scope identities'
tokenize and reveal calls in them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.errors import RateLimited
from policies.models import RateLimit
from tests.support.fake_acquirer import FakeAcquirer
from tests.support.groups import in_a_held_group
from tests.support.policies import vault_on, vault_serving
from tests.vault.test_capture import POLICY
from tests.vault.test_rate37_charge_locks import THIEF, _policy
from tests.vault.test_relay_card import GETNET, _card, relay
from vault.errors import RelayBodyInvalid
from vault.service import VaultService

__all__ = ["relay"]  # the fixture, imported for the test below

SPENT = RateLimit(per_second=0.001, burst=2)
ADDRESS = "capture-address rev37c-198.51.100.9"


@pytest.fixture
def vault(engine: Engine, softhsm_provider: HSMProvider) -> Iterator[VaultService]:
    yield from vault_serving(engine, softhsm_provider, POLICY)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_spent_address_never_reruns_another_callers_group(vault: VaultService) -> None:
    for _ in range(SPENT.burst):
        vault.charge_rate(ADDRESS, SPENT)
    attacker, runs = in_a_held_group(vault, lambda: vault.charge_rate(ADDRESS, SPENT))
    with pytest.raises(RateLimited):
        attacker.result(30)
    assert runs == [1], "the innocent operation ran again: the spent charge reran its group"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_early_refusal_never_refuses_what_the_bucket_allows(vault: VaultService) -> None:
    """Held: every unit of the burst is granted, through the early check as before."""
    roomy = RateLimit(per_second=0.001, burst=5)
    for _ in range(roomy.burst):
        vault.charge_rate("capture-session rev37c", roomy)
    with pytest.raises(RateLimited):
        vault.charge_rate("capture-session rev37c", roomy)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_relay_body_without_its_token_never_reruns_another_callers_group(
    engine: Engine, softhsm_provider: HSMProvider, acquirer: FakeAcquirer
) -> None:
    """A relay whose body holds no token at the route's pointer was refused inside its
    transaction: its charge rolled back with it (the call cost nothing, so the early
    check never refused the next) and so did the whole commit group, every other
    caller's operation run again. A certificate allowed one route could rerun every
    group it reached, without limit. Now the body is refused before the committer."""
    relayer = vault_on(engine, softhsm_provider, _policy(acquirer))
    try:
        for body in ({}, {"card": {}}, {"card": {"number": 4111}}):
            sent = len(acquirer.received)
            attacker, runs = in_a_held_group(
                relayer, lambda body=body: relayer.relay(THIEF, "acq", body)
            )
            with pytest.raises(RelayBodyInvalid):
                attacker.result(30)
            assert runs == [1], f"{body}: the relay's refusal reran the innocent operation"
            assert len(acquirer.received) == sent
    finally:
        relayer.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_card_detail_sent_by_the_caller_never_reruns_another_callers_group(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    """The same, for a detail the vault puts in (an expiry) that the body already
    holds: refused whatever the token holds, but inside the transaction, found after
    the token was read; now before the committer."""
    token = _card(relay)
    sent = len(acquirer.received)
    body = {"card": {"number": token, "expiry": "1231"}}
    attacker, runs = in_a_held_group(relay, lambda: relay.relay(GETNET, "plain", body))
    with pytest.raises(RelayBodyInvalid, match="already has a value"):
        attacker.result(30)
    assert runs == [1], "the relay's refusal reran the innocent operation"
    assert len(acquirer.received) == sent
