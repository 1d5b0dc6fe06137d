"""Review 44b (a second attack on session 44's leases, `vault._rate_leases`): a lease
left unused is spent, and a worker took one with every group. A caller whose calls on a
worker came more than a lease's life apart (0.1 s) paid a lease with each call, faster
than a bucket of a low rate refills: 60 calls at half its rate of 1 a second, then a
burst, and the burst was refused after 65 calls where the exact limit leaves room for
~994 (SQLite and PostgreSQL, a real vault); a caller at 4% of a 1,000/s limit spread
over 4 or 16 workers had 35 of 20,000. Now a worker takes a lease only while its calls
use leases up: at first, and after a lease ended unused, it charges exactly until a
lease's life brings a lease's worth of calls. And a lease statement that fails (a
statement or lock timeout) gives back the units its group moved from the lease before
it ran (they were lost: 123 of 1,024 admitted over 200 such failures).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.errors import RateLimited
from policies.models import RateLimit
from tests.support.pans import card_number
from tests.support.policies import clocked_vault_on
from tests.vault.test_rate_leases import _Bucket
from vault._rate_leases import RateLeases, held_units, lease_of
from vault.pan import Pan
from vault.service import CallContext, TokenizeRequest

_VICTIM = "spiffe://cofre/victim"


def _call(leases: RateLeases, bucket: _Bucket, limit: RateLimit, cost: int, now: float) -> bool:
    """One group of `cost` units that commits: whether it was admitted."""
    granted: list[Callable[[], None]] = []
    covered = leases.charge(
        _VICTIM,
        limit,
        cost,
        now,
        run=lambda start, units: bucket.charge(start, units, now),
        on_commit=granted.append,
        on_rollback=lambda _step: None,
    )
    admitted = covered or bucket.charge(now, cost, now)
    for grant in granted:
        grant()
    return admitted


def _slow_then_burst(limit: RateLimit, workers: int, gap: float, calls: int) -> tuple[int, int]:
    """`calls` single calls `gap` apart, round robin over `workers`, then a burst on
    worker 0 at one instant: what the leases admit of the burst, and an exact GCRA."""
    bucket, exact = _Bucket(limit), _Bucket(limit)
    leases = [RateLeases() for _ in range(workers)]
    now = 1_780_000_000.0
    for i in range(calls):
        now += gap
        assert _call(leases[i % workers], bucket, limit, 1, now)
        assert exact.charge(now, 1, now)
    leased = sum(_call(leases[0], bucket, limit, 1, now) for _ in range(limit.burst))
    return leased, sum(exact.charge(now, 1, now) for _ in range(limit.burst))


@pytest.mark.parametrize(
    ("limit", "workers", "gap", "calls"),
    [
        (RateLimit(per_second=1, burst=1024), 1, 0.5, 120),
        (RateLimit(per_second=10, burst=10_000), 1, 0.5, 120),
        (RateLimit(per_second=1000, burst=20_000), 1, 0.025, 1200),
        (RateLimit(per_second=1000, burst=20_000), 4, 0.025, 1200),
        (RateLimit(per_second=1000, burst=20_000), 16, 0.025, 1200),
    ],
)
def test_a_slow_caller_keeps_its_burst(
    limit: RateLimit, workers: int, gap: float, calls: int
) -> None:
    leased, exact = _slow_then_burst(limit, workers, gap, calls)
    assert leased >= exact - workers * held_units(limit), (leased, exact)


_POLICY = """
[identities."spiffe://cofre/payments"]
operations = ["tokenize"]
formats = ["pan_bin6_last4"]
rate_limit = { per_second = 1, burst = 1024 }
"""
_PAYMENTS = CallContext("spiffe://cofre/payments", "req-drain")


def test_a_slow_caller_keeps_its_burst_in_a_vault(
    engine: Engine, softhsm_provider: HSMProvider
) -> None:
    """60 calls 0.5 s apart (half its rate), then the clock stops and the caller sends
    until refused: the exact limit leaves 1,024 + 30 - 60 = 994."""
    limit = RateLimit(per_second=1, burst=1024)
    card = card_number("411111", 45)

    def tokenize() -> bool:
        try:
            vault.tokenize(_PAYMENTS, TokenizeRequest(Pan(card), "pan_bin6_last4"))
        except RateLimited:
            return False
        return True

    clock = [datetime(2026, 12, 7, 6, 0, tzinfo=UTC)]
    with clocked_vault_on(engine, softhsm_provider, _POLICY, clock) as vault:
        for _ in range(60):
            clock[0] += timedelta(seconds=0.5)
            assert tokenize()
        burst = 0
        while burst < 1100 and tokenize():
            burst += 1
    assert math.floor(994 - held_units(limit)) <= burst <= 994


class _Timeout(Exception):
    pass


def test_a_failed_lease_statement_gives_back_what_it_moved() -> None:
    """The clock stopped; two single calls, then a batch of a lease's worth whose group
    renews the lease and whose statement times out (the group rolls back), 200 times."""
    limit = RateLimit(per_second=1, burst=1024)
    units, _ = lease_of(limit)
    bucket, leases, now = _Bucket(limit), RateLeases(), 1_780_000_000.0
    admitted = 0

    def group(cost: int, *, fail: bool) -> bool:
        granted: list[Callable[[], None]] = []
        undone: list[Callable[[], None]] = []
        before = bucket.tat

        def run(start: float, n: int) -> bool:
            if fail:
                raise _Timeout("canceling statement due to statement timeout")
            return bucket.charge(start, n, now)

        try:
            ok = leases.charge(
                _VICTIM,
                limit,
                cost,
                now,
                run=run,
                on_commit=granted.append,
                on_rollback=undone.append,
            ) or bucket.charge(now, cost, now)
        except _Timeout:  # the group rolls back before its COMMIT
            bucket.tat = before
            for step in undone:
                step()
            return False
        for grant in granted:
            grant()
        return ok

    for _ in range(200):
        admitted += group(1, fail=False) + group(1, fail=False)
        admitted += units * group(units, fail=True)
    while group(1, fail=False):
        admitted += 1
    assert limit.burst - held_units(limit) <= admitted <= limit.burst
