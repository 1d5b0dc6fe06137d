"""Session 44 (issue 21): a worker's leases of a rate bucket (`vault._rate_leases`).

A commit group charges its sum and a lease of a few more units; the worker's next groups
use the lease with no statement. The attack a lease invites: more calls admitted than
the limit, by a caller spreading its calls over workers (or nodes) that each hold units,
or by units held while the bucket refills. The property below replays the admissions of
several workers, random costs, instants and failed commits, through an exact GCRA:
every one must conform. Then the same on the real databases, two workers on one
database with the clock stopped: the lease saves the statements and the limit holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from hsm.provider import HSMProvider
from policies.errors import RateLimited
from policies.models import RateLimit
from tests.support.pans import card_number
from tests.support.policies import clocked_vault_on
from vault._rate_leases import LEASE_MIN_BURST, RateLeases, held_units, lease_of, rounding
from vault.pan import Pan
from vault.service import CallContext, TokenizeRequest, VaultService


class _Bucket:
    """`rate_state`'s row and `CHARGE_SQL`'s arithmetic, in Python."""

    def __init__(self, limit: RateLimit) -> None:
        self.interval = 1.0 / limit.per_second
        self.tolerance = limit.burst * self.interval
        self.tat = 0.0  # long ago: full

    def charge(self, start: float, units: int, now: float) -> bool:
        moved = max(self.tat, start) + units * self.interval
        if moved - now > self.tolerance + rounding(now, self.tolerance):
            return False
        self.tat = moved
        return True


_OUTCOMES = ("commits", "rolls back", "commit fails")
Group = tuple[int, int, float, str]
Run = tuple[RateLimit, list[Group], list[float]]


@st.composite
def _runs(draw: st.DrawFn) -> Run:
    """A limit, and groups of three workers: (worker, cost, seconds since the group
    before, its outcome). Costs up to the burst, pauses up to a few leases' lives and
    now and then a wall clock stepped back: a lease must not outlive what it was
    charged as. A group rolled back before its COMMIT gives back what it took of a
    lease (another caller's refused charge reruns it, review 44); one whose COMMIT
    failed gives back nothing and is granted nothing."""
    burst = draw(st.integers(LEASE_MIN_BURST, 40_000))
    per_second = draw(st.sampled_from([1.0, 50.0, 1000.0, 20_000.0, 1_000_000.0]))
    limit = RateLimit(per_second=per_second, burst=burst)
    life = lease_of(limit)[1]
    group = st.tuples(
        st.integers(0, 2),
        st.one_of(st.integers(1, 8), st.integers(1, burst), st.just(burst)),
        st.one_of(st.just(0.0), st.floats(0, 3 * life), st.floats(0, 0.2), st.floats(-2 * life, 0)),
        st.sampled_from(_OUTCOMES),
    )
    # Each worker's clock off by its own amount (nodes under NTP, review 44).
    skews = draw(st.lists(st.one_of(st.just(0.0), st.floats(-0.5, 0.5)), min_size=3, max_size=3))
    return limit, draw(st.lists(group, min_size=1, max_size=200)), skews


# The attack on a lease charged at its taking: worker 0 leases on a full bucket; before
# the lease ends the bucket has refilled, worker 1 spends the whole burst and worker 0
# still answers from its lease, a call beyond the limit.
_REFILLED = (
    RateLimit(per_second=1000, burst=20_000),
    [(0, 1, 0.0, "commits"), (1, 20_000, 0.08, "commits"), (0, 1, 0.0, "commits")],
    [0.0, 0.0, 0.0],
)
# Review 44: a wall clock stepped back 2 s (an NTP step) into the time before a lease
# was taken; the lease answered, at that instant, units charged as used 3 s later.
_STEPPED_BACK = (
    RateLimit(per_second=1000, burst=1024),
    [(0, 1000, 0.0, "commits"), (0, 1, 1.0, "commits"), (0, 16, -2.0, "commits")],
    [0.0, 0.0, 0.0],
)


@settings(max_examples=500, deadline=None)
@given(_runs())
@example(_REFILLED)
@example(_STEPPED_BACK)
def test_leased_admissions_never_exceed_the_limit(run: Run) -> None:
    """Every group the leases and the bucket admitted, replayed through an exact GCRA
    at its instant, conforms: nothing admitted beyond the limit."""
    limit, groups, skews = run
    bucket = _Bucket(limit)
    leases = [RateLeases() for _ in range(3)]
    real = 1_780_000_000.0
    admitted: list[tuple[float, int]] = []
    for worker, cost, elapsed, outcome in groups:
        real += elapsed
        now = real + skews[worker]
        before = bucket.tat
        granted: list[Callable[[], None]] = []
        given_back: list[Callable[[], None]] = []
        covered = leases[worker].charge(
            "spiffe://cofre/thief",
            limit,
            cost,
            now,
            run=lambda start, units, now=now: bucket.charge(start, units, now),
            on_commit=granted.append,
            on_rollback=given_back.append,
        )
        ok = covered or bucket.charge(now, cost, now)
        if outcome != "commits":
            bucket.tat = before
            for step in given_back if outcome == "rolls back" else ():
                step()
            continue
        for grant in granted:
            grant()
        if ok:
            admitted.append((now, cost))
    exact = _Bucket(limit)
    for when, cost in admitted:
        assert exact.charge(when, cost, when), (when, cost, admitted)


def test_a_group_rolled_back_gives_its_lease_units_back() -> None:
    """Review 44: what a rolled-back group took of a lease is the lease's again; a
    group whose COMMIT failed gives nothing back (the database may have it)."""
    limit = RateLimit(per_second=1, burst=1024)
    units, _ = lease_of(limit)
    bucket, leases, now = _Bucket(limit), RateLeases(), 1_780_000_000.0

    def charge(cost: int) -> tuple[bool, list[Callable[[], None]], list[Callable[[], None]]]:
        granted: list[Callable[[], None]] = []
        given_back: list[Callable[[], None]] = []
        covered = leases.charge(
            "spiffe://cofre/victim",
            limit,
            cost,
            now,
            run=lambda start, n: bucket.charge(start, n, now),
            on_commit=granted.append,
            on_rollback=given_back.append,
        )
        return covered, granted, given_back

    assert not charge(units - 1)[0]  # less than a lease's worth of calls: exact
    bucket.charge(now, units - 1, now)
    covered, granted, _ = charge(1)  # a lease's worth: this group takes one
    assert covered
    granted[0]()
    tat = bucket.tat
    for _ in range(3):
        covered, _, given_back = charge(units)  # the whole lease, rolled back each time
        assert covered
        given_back[0]()
    assert charge(units)[0]  # still all there: no statement
    assert bucket.tat == tat
    covered, _, given_back = charge(1)  # spent: a new lease, taken with this group
    assert covered
    assert bucket.tat > tat


def test_refusals_do_not_grow_the_memory() -> None:
    """Review 44: a key whose lease is refused (its row not there yet: a keyed bucket
    per capture address, were its burst set past 1,024) left an entry, pruned by
    grants only: 50,000 addresses, 50,000 entries."""
    leases, limit, now = RateLeases(), RateLimit(per_second=2, burst=1024), 1_780_000_000.0
    for i in range(5000):
        leases.charge(
            f"capture-address 2001:db8:{i:x}::/64",
            limit,
            1,
            now + i,
            run=lambda _start, _units: False,
            on_commit=lambda _step: None,
            on_rollback=lambda _step: None,
        )
    assert len(leases._held) <= 1025


def test_a_lease_is_small_against_the_burst() -> None:
    assert lease_of(RateLimit(per_second=100, burst=LEASE_MIN_BURST - 1)) == (0, 0.0)
    for burst in (LEASE_MIN_BURST, 4000, 10**6, 10**9):
        for per_second in (0.5, 100.0, 2000.0, 1e6):
            limit = RateLimit(per_second=per_second, burst=burst)
            assert 16 <= lease_of(limit)[0] <= 64
            assert held_units(limit) <= burst / 32


_POLICY = """
[identities."spiffe://cofre/payments"]
operations = ["tokenize"]
formats = ["pan_bin6_last4"]
rate_limit = { per_second = 1, burst = 1024 }
"""
_PAYMENTS = CallContext("spiffe://cofre/payments", "req-lease")
_CARD = card_number("411111", 44)


@pytest.fixture
def workers(engine: Engine, softhsm_provider: HSMProvider) -> Iterator[list[VaultService]]:
    """Two workers on one database whose clock stands still (the bucket never refills)
    once the bucket's row exists (the first charge found no row and made it; a lease is
    not tried again for its life), its bucket full."""
    clock = [datetime(2026, 12, 7, 5, 0, tzinfo=UTC)]
    with (
        clocked_vault_on(engine, softhsm_provider, _POLICY, clock) as one,
        clocked_vault_on(engine, softhsm_provider, _POLICY, clock) as two,
    ):
        assert _tokenize(one)
        assert _tokenize(two)
        clock[0] += timedelta(seconds=2)  # past any lease's life
        with engine.begin() as c:  # and the bucket full again
            c.execute(text("UPDATE rate_state SET tat = :t"), {"t": clock[0].timestamp()})
        yield [one, two]


def _tat(engine: Engine) -> float:
    with engine.connect() as c:
        return float(c.execute(text("SELECT tat FROM rate_state")).scalar_one())


def _tokenize(vault: VaultService) -> bool:
    try:
        vault.tokenize(_PAYMENTS, TokenizeRequest(Pan(_CARD), "pan_bin6_last4"))
    except RateLimited:
        return False
    return True


def test_two_workers_lease_and_the_limit_holds(engine: Engine, workers: list[VaultService]) -> None:
    one, two = workers
    units, _ = lease_of(RateLimit(per_second=1, burst=1024))
    # A worker charges exactly until a lease's life brings a lease's worth of calls
    # (the clock stands still: one life); that call's group takes a lease.
    for _ in range(units - 1):
        before = _tat(engine)
        assert _tokenize(one)
        assert _tat(engine) == before + 1  # one unit at a time
    assert _tokenize(one)  # its group takes a lease: the call and `units` more
    leased = _tat(engine)
    assert leased > before + units
    for _ in range(units):  # the lease answers these: the row does not move
        assert _tokenize(one)
    assert _tat(engine) == leased
    assert _tokenize(one)  # spent: the next group leases again
    assert _tat(engine) > leased
    admitted, refused_in_a_row, turn = 2 * units + 1, 0, 0
    while refused_in_a_row < 2:  # both workers refuse: what their leases held is spent
        ok = _tokenize(workers[turn % 2])
        admitted += ok
        refused_in_a_row = 0 if ok else refused_in_a_row + 1
        turn += 1
    # The clock stood still: never more than the burst; at most the two workers'
    # leases (and the instant each was charged at) short of it.
    assert 1024 - 2 * held_units(RateLimit(per_second=1, burst=1024)) <= admitted <= 1024
    assert two is workers[1]
