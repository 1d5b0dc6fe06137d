"""Review rev37c's second bound, attacked (fin37): the oracle guard refuses
(429 `oracle_suspected`) inside the commit group, so each refused lookup or convergent
tokenize of a full bucket rolled its whole group back and every other caller's
operation in it ran again, one savepoint each (real PostgreSQL, the vault's own group
committer, measured as rev37c did: `tests.support.groups.in_a_held_group`).

Each refusal costs one rate unit (`_charge_refused`), so a certificate could rerun a
group with every unit of its rate limit, sending new cards of one full bucket. Now
the process remembers the bucket its guard refused an identity
(`vault._suspected_buckets.SuspectedBuckets`) and checks that identity's next call of
the bucket before the group: refused there, it never reaches the committer."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.errors import RateLimited
from tests.support.groups import in_a_held_group
from tests.support.policies import vault_serving
from tests.vault.test_batch_attacks import _bucket
from vault.errors import OracleSuspected
from vault.pan import Pan
from vault.service import CallContext, TokenizeRequest, VaultService

POLICY = """
[identities."spiffe://cofre/sweeper"]
operations = ["tokenize", "lookup"]
formats = ["pan_bin6_last4"]
rate_limit = { per_second = 0.001, burst = 100 }
oracle_guard = { max_pans_per_bucket = 2 }
"""
SWEEPER = CallContext("spiffe://cofre/sweeper", "req-fin37-sweep")

CALLS: dict[str, Callable[[VaultService, str], object]] = {
    "lookup": lambda vault, card: vault.lookup(SWEEPER, Pan(card)),
    "tokenize": lambda vault, card: vault.tokenize(
        SWEEPER, TokenizeRequest(Pan(card), "pan_bin6_last4")
    ),
}


@pytest.fixture
def vault(engine: Engine, softhsm_provider: HSMProvider) -> Iterator[VaultService]:
    yield from vault_serving(engine, softhsm_provider, POLICY)


def _filled(vault: VaultService, call: Callable[[VaultService, str], object]) -> list[str]:
    """Cards of one bucket: the guard's two answered, the third refused (in its group:
    the process learns the bucket there)."""
    cards = _bucket(6)
    for card in cards[:2]:
        call(vault, card)
    with pytest.raises(OracleSuspected):
        call(vault, cards[2])
    return cards


@pytest.mark.parametrize("operation", sorted(CALLS))
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_full_bucket_never_reruns_another_callers_group(
    vault: VaultService, operation: str
) -> None:
    call = CALLS[operation]
    cards = _filled(vault, call)
    for card in cards[3:]:  # each a unit of the certificate's rate: reruns at its rate
        attacker, runs = in_a_held_group(vault, lambda card=card: call(vault, card))
        with pytest.raises(OracleSuspected):
            attacker.result(30)
        assert runs == [1], f"{operation}: the guard's refusal reran the innocent operation"


@pytest.mark.parametrize("operation", sorted(CALLS))
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_card_already_counted_in_a_full_bucket_is_refused_as_any_other(
    vault: VaultService, operation: str
) -> None:
    """The check before the group is the guard's own, so a card the identity sent
    within the window is refused as a new one is once the bucket is full (atk47: until
    then it was answered, and every other card refused, which told the bucket's cards
    from a caller's guesses)."""
    cards = _filled(vault, CALLS[operation])
    for card in (cards[0], cards[3]):
        with pytest.raises(OracleSuspected):
            CALLS[operation](vault, card)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_refusal_before_the_group_still_costs_its_unit(vault: VaultService) -> None:
    """Held: refused before the group, after the call's HMAC, a guess costs its rate
    unit as one refused in the group does, so the rate limit still ends the sweep."""
    cards = _filled(vault, CALLS["lookup"])
    with pytest.raises(RateLimited):
        for _ in range(200):  # the burst: 100 units, 3 spent
            with pytest.raises(OracleSuspected):
                vault.lookup(SWEEPER, Pan(cards[4]))
