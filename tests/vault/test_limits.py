"""Rate charges inside commit groups (issue 21), on the real databases: a group charges
each identity once, after its operations' work and just before its commit; a refused sum
reruns the group one charge at a time, so exactly the operations within the limit pass;
and two committers (two workers) on one database grant the burst and no more. Then the
oracle guard's window, attacked across a window boundary with the clock in hand."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, text

from policies.errors import RateLimited
from policies.models import OracleGuard, Quota, RateLimit
from tests.support.groups import one_group
from vault._early_room import EARLY_ROOM_SECONDS, EarlyRoom
from vault.errors import OracleSuspected, QuotaExceeded
from vault.limits import MAX_WINDOW_SECONDS, Limits
from vault.storage.database import create_database_engine, migrate
from vault.storage.groupcommit import GroupCommitter

NOW = 1_000_000.0
# No refill during a test: one unit every 1,000 s.
SLOW = 0.001


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_database_engine(database_url)
    migrate(engine)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY)"))
    yield engine
    engine.dispose()


def _charged(
    identity: str, limit: RateLimit, item: int, cost: int = 1
) -> Callable[[Connection], int]:
    """An operation as tokenize runs it: the deferrable charge, then its writes."""

    def work(c: Connection) -> int:
        Limits().charge_rate(c, identity, limit, cost, NOW, deferrable=True)
        c.execute(text("INSERT INTO items (id) VALUES (:id)"), {"id": item})
        return item

    return work


def _items(engine: Engine) -> set[int]:
    with engine.connect() as c:
        return {r for (r,) in c.execute(text("SELECT id FROM items"))}


def _tat(engine: Engine, identity: str) -> float:
    with engine.connect() as c:
        return float(
            c.execute(text("SELECT tat FROM rate_state WHERE identity = :i"), {"i": identity})
            .scalars()
            .one()
        )


class _Recording(Limits):
    """Notes every call: its identity, its cost, and how many of the group's writes
    its transaction had made by then."""

    def __init__(self) -> None:
        self.made: list[tuple[str, int, int]] = []

    def charge_rate(
        self,
        connection: Connection,
        identity: str,
        limit: RateLimit,
        cost: int,
        now: float,
        *,
        clock: Callable[[], float] | None = None,
        deferrable: bool = False,
    ) -> None:
        written = connection.execute(text("SELECT count(*) FROM items")).scalar_one()
        self.made.append((identity, cost, written))
        super().charge_rate(
            connection, identity, limit, cost, now, clock=clock, deferrable=deferrable
        )


def test_a_group_charges_each_identity_once_just_before_its_commit(engine: Engine) -> None:
    limit = RateLimit(per_second=SLOW, burst=100)
    limits = _Recording()

    def charged(identity: str, item: int, cost: int) -> Callable[[Connection], int]:
        def work(c: Connection) -> int:
            limits.charge_rate(c, identity, limit, cost, NOW, deferrable=True)
            c.execute(text("INSERT INTO items (id) VALUES (:id)"), {"id": item})
            return item

        return work

    committer = GroupCommitter(engine)
    try:
        works = [charged("b", i, 3) for i in range(1, 3)]
        works += [charged("a", i, 1) for i in range(3, 8)]
        futures = one_group(committer, works)
    finally:
        committer.close()
    assert sorted(f.result() for f in futures) == list(range(1, 8))
    # The operations' deferred calls saw fewer than 7 writes; the charges made are the
    # two sums, in identity order, after all seven operations wrote.
    made = [m for m in limits.made if m[2] == 7]
    assert made == [("a", 5, 7), ("b", 6, 7)]
    assert _tat(engine, "a") == pytest.approx(NOW + 5 / SLOW)
    assert _tat(engine, "b") == pytest.approx(NOW + 6 / SLOW)
    assert _items(engine) == set(range(1, 8))


def test_a_refused_group_charge_grants_exactly_the_operations_within_the_limit(
    engine: Engine,
) -> None:
    """Burst 4: of a's calls costing 1, 1, 2, 1, 1 in one group, the sum (6) is refused;
    run one at a time, the ones that fit pass (4 units), the rest get the 429 they got
    before grouping and wrote nothing. b's call in the same group is untouched."""
    limit = RateLimit(per_second=SLOW, burst=4)
    committer = GroupCommitter(engine)
    try:
        costs = [1, 1, 2, 1, 1]
        works = [_charged("a", limit, i, cost) for i, cost in enumerate(costs, start=1)]
        works.append(_charged("b", limit, 10, cost=4))
        futures = one_group(committer, works)
    finally:
        committer.close()
    granted, refused = [], []
    for future, cost in zip(futures, [*costs, 4], strict=True):
        error = future.exception()
        if error is None:
            granted.append((future.result(), cost))
        else:
            assert isinstance(error, RateLimited)
            assert error.retry_after > 0
            refused.append(cost)
    assert (10, 4) in granted
    assert sum(cost for item, cost in granted if item != 10) == 4
    assert refused
    assert _items(engine) == {item for item, _ in granted}
    assert _tat(engine, "a") == pytest.approx(NOW + 4 / SLOW)


def test_two_committers_on_one_database_grant_the_burst_and_no_more(engine: Engine) -> None:
    """Two workers' committers charge one identity at once: the bucket is one row in
    the shared database, so 40 racing calls get exactly the burst of 15."""
    limit = RateLimit(per_second=SLOW, burst=15)
    committers = [GroupCommitter(engine), GroupCommitter(engine)]

    def call(item: int) -> bool:
        try:
            committers[item % 2].run(_charged("a", limit, item))
        except RateLimited:
            return False
        return True

    try:
        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(call, range(40)))
    finally:
        for committer in committers:
            committer.close()
    granted = [item for item, ok in enumerate(outcomes) if ok]
    assert len(granted) == 15
    assert _items(engine) == set(granted)


def test_outside_a_group_a_deferrable_charge_is_made_at_once(engine: Engine) -> None:
    limit = RateLimit(per_second=SLOW, burst=1)
    with engine.begin() as c:
        Limits().charge_rate(c, "a", limit, 1, NOW, deferrable=True)
        with pytest.raises(RateLimited):
            Limits().charge_rate(c, "a", limit, 1, NOW, deferrable=True)


# ------------------------------------------------------------------ the early check's room
def test_the_early_check_reads_the_room_a_bucket_has(engine: Engine) -> None:
    limit = RateLimit(per_second=1, burst=5)
    with engine.begin() as c:
        assert Limits().check_rate(c, "spiffe://cofre/a", limit, 1, NOW) == 5  # no row yet
        Limits().charge_rate(c, "spiffe://cofre/a", limit, 2, NOW)
        assert Limits().check_rate(c, "spiffe://cofre/a", limit, 1, NOW) == 3
        Limits().charge_rate(c, "spiffe://cofre/a", limit, 3, NOW)
        with pytest.raises(RateLimited):
            Limits().check_rate(c, "spiffe://cofre/a", limit, 1, NOW)
        assert Limits().check_rate(c, "spiffe://cofre/a", limit, 1, NOW + 1) == 1  # refilled


def test_early_room_admits_what_the_last_read_had_room_for_while_it_is_fresh() -> None:
    clock = [100.0]
    room = EarlyRoom(lambda: clock[0])
    limit = RateLimit(per_second=10, burst=3)
    assert not room.admit("spiffe://cofre/a", limit, 1)  # never read: read it
    room.note("spiffe://cofre/a", limit, room=3, cost=1)
    assert room.admit("spiffe://cofre/a", limit, 1)
    assert not room.admit("spiffe://cofre/a", limit, 2)  # one unit left
    assert room.admit("spiffe://cofre/a", limit, 1)
    assert not room.admit("spiffe://cofre/a", limit, 1)  # used up: read again
    assert not room.admit("spiffe://cofre/b", limit, 1)  # each identity its own
    room.note("spiffe://cofre/a", limit, room=3, cost=1)
    assert not room.admit("spiffe://cofre/a", RateLimit(per_second=10, burst=4), 1)  # new policy
    clock[0] += EARLY_ROOM_SECONDS + 0.01
    assert not room.admit("spiffe://cofre/a", limit, 1)  # stale: read again
    room.note("spiffe://cofre/a", limit, room=3, cost=1)
    room.forget("spiffe://cofre/a")  # a charge was refused: read again
    assert not room.admit("spiffe://cofre/a", limit, 1)


def test_a_refused_charge_forgets_the_early_room(engine: Engine) -> None:
    limits, limit = Limits(), RateLimit(per_second=0.001, burst=1)
    limits.early.note("spiffe://cofre/a", limit, room=1, cost=0)
    with engine.begin() as c:
        limits.charge_rate(c, "spiffe://cofre/a", limit, 1, NOW)
        with pytest.raises(RateLimited):
            limits.charge_rate(c, "spiffe://cofre/a", limit, 1, NOW)
    assert not limits.early.admit("spiffe://cofre/a", limit, 1)


@pytest.mark.parametrize(("per_second", "burst"), [(7, 3), (70, 1), (30, 7), (7, 1000)])
def test_a_call_of_exactly_the_burst_passes_at_todays_epoch(
    engine: Engine, per_second: float, burst: int
) -> None:
    """``tat + increment - now`` is computed at the scale of epoch seconds; for these
    limits it came out a few 1e-8 s above the tolerance, and a full-burst call on a
    full bucket was refused 'retry after 0.00s'. One unit more is still refused."""
    now = 1_764_720_000.123
    limits = Limits()
    limit = RateLimit(per_second=per_second, burst=burst)
    with engine.begin() as c:
        assert limits.check_rate(c, "spiffe://cofre/a", limit, burst, now) == burst
        limits.charge_rate(c, "spiffe://cofre/a", limit, burst, now)
    with pytest.raises(RateLimited), engine.begin() as c:
        limits.check_rate(c, "spiffe://cofre/a", limit, 1, now)
    with pytest.raises(RateLimited), engine.begin() as c:
        limits.charge_rate(c, "spiffe://cofre/a", limit, 1, now)


@pytest.mark.parametrize(("per_second", "burst"), [(1e6, 1000), (1 / 86_400, 1_000_000_000)])
def test_a_rate_at_the_ends_of_its_bounds_refuses_with_a_finite_wait(
    engine: Engine, per_second: float, burst: int
) -> None:
    """The policy refuses a rate outside one a day to 10^9 a second (at 1e-310 the
    refusal's wait was infinite, and its Retry-After a 500); at the bounds the early
    check, the charge and a refusal still compute."""
    limit = RateLimit(per_second=per_second, burst=burst)
    limits = Limits()
    with engine.begin() as c:
        assert 1 <= limits.check_rate(c, "spiffe://cofre/a", limit, 1, NOW) <= burst + 1
        limits.charge_rate(c, "spiffe://cofre/a", limit, burst, NOW)
    with pytest.raises(RateLimited) as refused, engine.begin() as c:
        limits.charge_rate(c, "spiffe://cofre/a", limit, 1, NOW)
    assert 0 < refused.value.retry_after <= 86_401
    for outside in (1e308, 1e-320, 1 / 86_401, 1e6 + 1):
        with pytest.raises(ValueError, match="per_second"):
            RateLimit(per_second=outside, burst=3)


def test_a_quota_refusal_is_learnt_only_once_handed_to_its_caller(engine: Engine) -> None:
    """The charge's read may hold another operation's charge of the same transaction,
    which a rollback undoes (a commit group's first run, a failed commit): what it saw
    left is remembered only when the caller gets the refusal (`learn_quota`), its
    transaction then committed. Learnt, it refuses more than that before the committer,
    and nothing a new day or another limit would allow."""
    limits, quota, now = (
        Limits(),
        Quota(detokenize_per_day=3),
        datetime(2026, 12, 2, 12, tzinfo=UTC),
    )
    with engine.begin() as c:
        limits.charge_quota(c, "a", quota, 2, now)
    with pytest.raises(QuotaExceeded) as refused, engine.begin() as c:
        limits.charge_quota(c, "a", quota, 2, now)
    limits.refuse_spent_quota("a", quota, 2, now)  # not learnt: the charge decides
    limits.learn_quota("a", refused.value)
    with pytest.raises(QuotaExceeded):
        limits.refuse_spent_quota("a", quota, 2, now)
    limits.refuse_spent_quota("a", quota, 1, now)  # 1 left: the charge decides
    limits.refuse_spent_quota("a", quota, 2, now + timedelta(days=1))
    limits.refuse_spent_quota("a", Quota(detokenize_per_day=10), 2, now)
    limits.refuse_spent_quota("b", quota, 2, now)


def test_learnt_quota_refusals_are_bounded_oldest_first(engine: Engine) -> None:
    """One entry per identity and limit, at most `EARLY_ROOM_ENTRIES` of them: a new
    one drops the oldest (review 12: filtering by day kept every entry of the day and
    rebuilt the map at each refusal, from request threads)."""
    limits, quota = Limits(), Quota(detokenize_per_day=1)
    now = datetime(2026, 12, 2, 12, tzinfo=UTC)
    with engine.begin() as c:
        limits.charge_quota(c, "spent", quota, 1, now)
    with pytest.raises(QuotaExceeded) as refused, engine.begin() as c:
        limits.charge_quota(c, "spent", quota, 1, now)
    for index in range(1100):
        limits.learn_quota(f"identity-{index}", refused.value)
    assert len(limits._quota_left) == 1024
    limits.refuse_spent_quota("identity-0", quota, 1, now)  # the oldest: forgotten
    with pytest.raises(QuotaExceeded):
        limits.refuse_spent_quota("identity-1099", quota, 1, now)


# ------------------------------------------------------------------ the oracle guard's span
GUARD = OracleGuard(max_pans_per_bucket=10, window_seconds=86_400)
# A window boundary: the default windows are UTC days, named by their first second.
BOUNDARY = datetime(2026, 12, 3, tzinfo=UTC)
BUCKET = b"\x01" * 16  # one BIN and last four, hashed (`oracle_bucket`)


def _card(n: int) -> bytes:
    """The guard's item for the n-th guess: a PAN's HMAC fingerprint stands in."""
    return n.to_bytes(4, "big") * 8


def _refusal(
    engine: Engine,
    limits: Limits,
    guard: OracleGuard,
    sent: list[tuple[bytes, int]],
    now: datetime,
    *,
    identity: str = "spiffe://cofre/guessing",
) -> OracleSuspected | None:
    """One guarded call sending `sent` (bucket, n-th card) at `now`, in its own
    transaction: the refusal, or None when the guard let it through (its rows committed)."""
    try:
        with engine.begin() as c:
            limits.watch(c, identity, guard, [(b, _card(n)) for b, n in sent], now)
    except OracleSuspected as refused:
        return refused
    return None


def _watched(
    engine: Engine, limits: Limits, cards: list[int], now: datetime, guard: OracleGuard = GUARD
) -> OracleSuspected | None:
    """`_refusal` of a call sending `cards` of `BUCKET`."""
    return _refusal(engine, limits, guard, [(BUCKET, n) for n in cards], now)


def test_guesses_either_side_of_a_window_boundary_count_together(engine: Engine) -> None:
    """The attack on fixed windows: the limit's ten guesses in the last seconds of one
    window, ten more in the first seconds of the next. Every one was admitted, twenty
    middle digits tried in twenty seconds where the policy allows ten a day."""
    limits = Limits()
    for n in range(10):
        assert _watched(engine, limits, [n], BOUNDARY - timedelta(seconds=10 - n)) is None
    after = [
        n
        for n in range(10, 20)
        if _watched(engine, limits, [n], BOUNDARY + timedelta(seconds=n - 9)) is None
    ]
    assert after == []
    # A card already seen, on either side of the boundary, is refused too (atk47: the
    # answer depends on how many cards the bucket holds, never on which).
    again = _watched(engine, limits, [0, 9], BOUNDARY + timedelta(seconds=30))
    assert isinstance(again, OracleSuspected)
    # The refusal says when the call would pass: once the cards of the window before
    # the boundary no longer count, at the end of the window after it.
    refused = _watched(engine, limits, [20], BOUNDARY + timedelta(hours=1))
    assert isinstance(refused, OracleSuspected)
    assert refused.code == "oracle_suspected"
    assert refused.retry_after == pytest.approx(86_400 - 3600)
    assert _watched(engine, limits, [20], BOUNDARY + timedelta(days=1)) is None


def test_a_batch_across_the_boundary_is_refused_as_a_whole(engine: Engine) -> None:
    """Six guesses before the boundary, then a batch of six new ones after it: twelve in
    the span, refused, and nothing of it recorded: four of them pass, not a fifth."""
    limits = Limits()
    assert _watched(engine, limits, list(range(6)), BOUNDARY - timedelta(seconds=1)) is None
    refused = _watched(engine, limits, list(range(6, 12)), BOUNDARY + timedelta(seconds=1))
    assert isinstance(refused, OracleSuspected)
    assert _watched(engine, limits, list(range(6, 10)), BOUNDARY + timedelta(seconds=2)) is None
    assert _watched(engine, limits, [10], BOUNDARY + timedelta(seconds=3)) is not None


def test_a_purge_keeps_the_window_before_for_the_longest_guard(engine: Engine) -> None:
    """A 31-day guard reads the window before the one under way, which began up to 62
    days ago: the purge, which kept 31 days, would have forgotten its ten cards."""
    guard = OracleGuard(max_pans_per_bucket=10, window_seconds=MAX_WINDOW_SECONDS)
    first = datetime.fromtimestamp(
        1_764_720_000 // MAX_WINDOW_SECONDS * MAX_WINDOW_SECONDS + 1, UTC
    )
    limits = Limits()
    assert _watched(engine, limits, list(range(10)), first, guard) is None
    late = first + timedelta(seconds=2 * MAX_WINDOW_SECONDS - 2)  # the next window's end
    with engine.begin() as c:
        limits.purge_windows(c, late, keep_seconds=MAX_WINDOW_SECONDS)
    assert _watched(engine, limits, [10], late, guard) is not None
    # Once no window read holds them, the purge takes them.
    with engine.begin() as c:
        assert limits.purge_windows(c, late + timedelta(days=62), keep_seconds=0) >= 10


_BUCKETS = (b"\x01" * 16, b"\x02" * 16)
_CALL = st.tuples(
    st.integers(0, 150),  # seconds since the call before
    st.lists(st.tuples(st.sampled_from(_BUCKETS), st.integers(0, 7)), min_size=1, max_size=4),
)
_EXAMPLES = itertools.count()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    limit=st.integers(1, 5),
    start=st.integers(0, 119),
    calls=st.lists(_CALL, min_size=1, max_size=14),
)
def test_no_span_of_a_window_admits_more_than_the_limit(
    engine: Engine, limit: int, start: int, calls: list[tuple[int, list[tuple[bytes, int]]]]
) -> None:
    """Any calls at any times: in no span of `window_seconds` (ends included) does a
    bucket admit more than the limit of distinct cards. A refusal's Retry-After is the
    moment the same call would pass if nothing else were sent, and the vault agrees
    with a plain model of the rule (the cards of this window and the one before it, and
    each card sent, counted as new whether or not they hold it: atk47)."""
    guard = OracleGuard(max_pans_per_bucket=limit, window_seconds=60)
    size = guard.window_seconds
    identity = f"spiffe://cofre/property-{next(_EXAMPLES)}"
    limits = Limits()
    admitted: list[tuple[int, bytes, int]] = []  # (second, bucket, card)

    def model_admits(sent: list[tuple[bytes, int]], at: int) -> bool:
        read_from = at // size * size - size
        for bucket in {b for b, _ in sent}:
            held = {c for t, b, c in admitted if b == bucket and t // size * size >= read_from}
            # Each card sent counts, one the bucket holds too (atk47).
            if len(held) + len({c for b, c in sent if b == bucket}) > limit:
                return False
        return True

    at = int(BOUNDARY.timestamp()) // size * size + start
    for gap, sent in calls:
        at += gap
        expected = model_admits(sent, at)
        when = datetime.fromtimestamp(at, UTC)
        refused = _refusal(engine, limits, guard, sent, when, identity=identity)
        assert (refused is None) == expected
        if refused is None:
            admitted.extend((at, bucket, card) for bucket, card in sent)
        elif all(len({c for b, c in sent if b == bucket}) <= limit for bucket in _BUCKETS):
            # The first second the model lets the same call through: the rule changes
            # only at window boundaries.
            boundaries = range(at // size * size + size, at + 3 * size, size)
            passes = next(t for t in [at, *boundaries] if model_admits(sent, t))
            assert at + refused.retry_after == max(passes, at + 1)
    for end, _, _ in admitted:
        for bucket in _BUCKETS:
            span = {c for t, b, c in admitted if b == bucket and end - size <= t <= end}
            assert len(span) <= limit
