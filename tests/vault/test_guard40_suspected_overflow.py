"""Review 39b's overflow of the oracle guard's memory, attacked end to end (session 40).

A certificate that fills one bucket first and then more than `SUSPECTED_ENTRIES` others
keeps the first one clearing first, so the memory lets it go as soon as it learns it
again: each new card of that bucket was refused in the commit group, rolling it back and
rerunning every other caller's operation in it, at the certificate's rate. Now an
identity past the memory is checked before the group on every guarded call until the
buckets let go have cleared (`vault._suspected_buckets`). The memory is made two
buckets here (the unit test `test_rev39b_suspected_overflow.py` runs the real size)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

import vault._suspected_buckets as suspected_buckets
from hsm.provider import HSMProvider
from tests.support.groups import in_a_held_group
from tests.support.pans import cards_of_one_bucket
from tests.support.policies import vault_serving
from vault.errors import OracleSuspected
from vault.pan import Pan
from vault.service import CallContext, TokenizeRequest, VaultService

POLICY = """
[identities."spiffe://cofre/sweeper"]
operations = ["tokenize", "lookup"]
formats = ["pan_bin6_last4"]
rate_limit = { per_second = 0.001, burst = 200 }
oracle_guard = { max_pans_per_bucket = 1, window_seconds = 3600 }
"""
SWEEPER = CallContext("spiffe://cofre/sweeper", "req-guard40-sweep")
CALLS: dict[str, Callable[[VaultService, str], object]] = {
    "lookup": lambda vault, card: vault.lookup(SWEEPER, Pan(card)),
    "tokenize": lambda vault, card: vault.tokenize(
        SWEEPER, TokenizeRequest(Pan(card), "pan_bin6_last4")
    ),
}


@pytest.fixture
def vault(
    engine: Engine, softhsm_provider: HSMProvider, monkeypatch: pytest.MonkeyPatch
) -> Iterator[VaultService]:
    monkeypatch.setattr(suspected_buckets, "SUSPECTED_ENTRIES", 2)
    yield from vault_serving(engine, softhsm_provider, POLICY)


@pytest.mark.parametrize("operation", sorted(CALLS))
def test_the_bucket_past_the_memory_never_reruns_another_callers_group(
    vault: VaultService, operation: str
) -> None:
    call = CALLS[operation]
    now = datetime.now(UTC)
    moment = [now - timedelta(hours=1)]  # the window before: the first bucket clears first
    vault._clock = lambda: moment[0]  # type: ignore[method-assign]
    buckets = [cards_of_one_bucket(bin6, 6) for bin6 in ("411111", "422222", "433333")]
    for cards in buckets:
        call(vault, cards[0])
        with pytest.raises(OracleSuspected):
            call(vault, cards[1])  # refused in its group, learnt there
        moment[0] = now
    for card in buckets[0][2:]:  # each a unit of the certificate's rate
        attacker, runs = in_a_held_group(vault, lambda card=card: call(vault, card))
        with pytest.raises(OracleSuspected):
            attacker.result(30)
        assert runs == [1], f"{operation}: the bucket past the memory reran the group"
    with pytest.raises(OracleSuspected):  # a card already counted too (atk47)
        call(vault, buckets[0][0])


def test_a_call_with_no_guarded_bucket_is_not_checked_past_the_memory() -> None:
    """Held: past the memory only a call with a guarded bucket is asked before the group
    (a fresh token of a large space has none, and pays no read transaction)."""
    memory = suspected_buckets.SuspectedBuckets()
    memory.learn("a", [i.to_bytes(16) for i in range(suspected_buckets.SUSPECTED_ENTRIES + 1)], 9.0)
    assert not memory.suspected("a", [], 1.0)
    assert memory.suspected("a", [b"\xff" * 16], 1.0)
    assert not memory.suspected("a", [b"\xff" * 16], 10.0), "cleared"
    assert "a" not in memory._past, "its mark let go once cleared"
