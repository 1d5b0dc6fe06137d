"""Rate limits, daily quotas and the tokenize-oracle guard, kept in the database.

IN PCI SCOPE. Every check runs inside the operation's own transaction, so a refused call
leaves nothing written (its charge rolls back with it) and a granted one is charged
exactly when it commits. Because the state is in the shared database, N nodes enforce
one limit, not N.

- **Rate limits** use GCRA (the generic cell rate algorithm, the token bucket expressed
  as one "theoretical arrival time" per identity): one conditional ``UPDATE`` moves it
  forward by the call's cost, so two nodes cannot both spend the last unit. A batch of
  N items costs N. Inside a commit group the charges of one identity may be summed and
  made once, just before the commit (`charge_rate(deferrable=True)`): the bucket's row
  is locked for the commit only, not from the group's first operation on (issue 21: on
  PostgreSQL the other worker's group waited 10-14 ms a charge for that lock). If the
  sum is refused the group runs again with each operation charged at once, so exactly
  the operations within the limit pass, as without the grouping; that run first locks
  the group's rows in the same order (`vault._group_charges`, session 38).
- **Quotas** are fixed UTC-day counters, bumped by a conditional ``UPDATE``.
- **The oracle guard** remembers, per identity, BIN/last-four bucket and window, which
  distinct PANs (by their HMAC fingerprint) were sent where the answer depends on what
  the vault holds. Past the policy's limit the call is refused with `OracleSuspected`.
  A call counts the distinct PANs of the window under way and of the one before it, so
  no span of the window's length admits more than the limit (fixed windows alone let
  the limit through at the end of one window and again at the start of the next).
  The check is a read, then an insert, and a transaction sees only committed rows and
  its own: N nodes checking one bucket at the same instant (a batch or a group commit
  each) can each admit up to the limit, N times it in one race, which
  docs/threat-model.md accepts.

Clocks: the rate limiter compares wall-clock seconds across nodes, so nodes must run NTP
(as PCI DSS 10.6 requires anyway).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import Connection, Table, and_, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from policies.errors import RateLimited
from policies.models import OracleGuard, Quota, RateLimit
from vault._early_room import EARLY_ROOM_ENTRIES, EarlyRoom
from vault._group_charges import GroupCharges
from vault.errors import OracleSuspected, QuotaExceeded
from vault.pan import Pan
from vault.storage.groupcommit import before_commit, before_rerun
from vault.storage.rawsql import fetch_all, insert_rows
from vault.storage.schema import oracle_watch, rate_state, usage_counters

__all__ = [
    "DETOKENIZE_QUOTA",
    "GUARD_KEEP_FLOOR",
    "IDEMPOTENCY_WINDOW",
    "MAX_IDEMPOTENCY_WINDOW",
    "MAX_WINDOW_SECONDS",
    "MIN_IDEMPOTENCY_WINDOW",
    "Limits",
    "guard_horizon",
    "oracle_bucket",
]

DETOKENIZE_QUOTA: Final = "detokenize"
_DAY: Final = 86400
# The longest guard window a policy may set (policies.models.OracleGuard). The guard
# reads the window before the one under way too, which began up to twice this long ago:
# its rows are kept that long (`purge_windows`), so that no window still read loses its
# memory.
MAX_WINDOW_SECONDS: Final = 31 * _DAY
# The least a guard's rows are kept past the window under way (`guard_horizon`): two
# default windows, as long as the default guard reads.
GUARD_KEEP_FLOOR: Final = 2 * _DAY
# How long past its time a rate bucket is kept (it is full again then, as if it had no
# row): an hour of margin for the nodes' clocks.
RATE_KEEP_SECONDS: Final = 3600
# How long an idempotency key's record answers, then is forgotten (review 27: kept for
# ever, one card sent with N keys added N rows). A day by default, as Stripe and Basis
# Theory keep theirs; `cofre.settings.TokenSettings.idempotency_key_ttl_hours` bounds.
IDEMPOTENCY_WINDOW: Final = timedelta(hours=24)
MIN_IDEMPOTENCY_WINDOW: Final = timedelta(hours=1)
MAX_IDEMPOTENCY_WINDOW: Final = timedelta(hours=168)
_BUCKET_CONTEXT: Final = b"cofre oracle bucket v1\x00"
_GROUP_CHARGES: Final = "rate charges"

# The statements every tokenize and detokenize runs inside the group commit, built once:
# building and cache-keying SQLAlchemy expressions per call was a tenth of the
# committer thread's time in issue 21's profile.
# The GCRA step in one conditional UPDATE, on the driver's cursor (`vault.storage.rawsql`,
# like the oracle guard's): the committer runs it for every operation, and SQLAlchemy's
# execute of the expression cost ~0.12 ms of Python a call (issue 21). RETURNING says
# whether the row moved (SQLite has it since 3.35).
_CHARGE_SQL: Final = (
    "UPDATE rate_state SET tat = CASE WHEN tat > ? THEN tat ELSE ? END + ? "
    "WHERE identity = ? AND CASE WHEN tat > ? THEN tat ELSE ? END + ? - ? <= ? RETURNING 1"
)
# The bucket's read, on the driver's cursor too (`check_rate` runs before every tokenize).
_TAT_SQL: Final = "SELECT tat FROM rate_state WHERE identity = ?"
# The same on SQLite and PostgreSQL; "window" is quoted, a keyword in both. Another
# node may insert the same row first: its row is as good as ours. The read takes the
# window under way and the one before it (`Limits.watch`) as one range of the primary
# key, from the earlier window's first second to the next window's: a row of the next
# window (another node's clock a little ahead at a boundary) is a card sent too, and
# counts; rows further ahead (a node's clock days ahead, or written by hand) are not
# read, or they would keep a bucket full until their far window passed (review 26).
_SEEN_SQL: Final = (
    'SELECT bucket, "window", item FROM oracle_watch'
    ' WHERE identity = ? AND "window" BETWEEN ? AND ? AND bucket IN (?*)'
)
_WATCH_INTO: Final = 'oracle_watch (identity, bucket, "window", item)'
# PostgreSQL only (SQLite has no INSERT in a WITH): `_SEEN_SQL` and the insert at once,
# the buckets and the items sent as binary arrays (`%b`): psycopg parsed a VALUES list of
# 4,000 placeholders and dumped each value in Python, ~20 ms of the committer's CPU for a
# batch of 1,000 cards (issue 21). The read is one primary-key search per bucket, as a
# LATERAL subquery: as `bucket = ANY(...)` of several buckets it was a Filter on every
# row of the identity's window whenever the table had grown much since its statistics
# (`vault.operations._statements._TAKEN_PG` says more).
_SEEN_THEN_WATCH_SQL: Final = (
    'WITH seen AS (SELECT sent.bucket, held."window", held.item'
    " FROM unnest(%b::bytea[]) AS sent(bucket)"
    ' CROSS JOIN LATERAL (SELECT "window", item FROM oracle_watch WHERE identity = %s'
    ' AND "window" BETWEEN %s AND %s AND bucket = sent.bucket OFFSET 0) AS held),'
    ' watched AS (INSERT INTO oracle_watch (identity, bucket, "window", item) SELECT %s, b, %s, i'
    " FROM unnest(%b::bytea[], %b::bytea[]) AS sent(b, i) ON CONFLICT DO NOTHING)"
    " SELECT * FROM seen"
)


def oracle_bucket(pan: Pan) -> bytes:
    """The guard's bucket of `pan`: its first six and last four digits and its length,
    hashed so that the table holds no digits at all."""
    digits = pan.reveal()
    name = f"{digits[:6]}|{digits[-4:]}|{len(digits)}".encode("ascii")
    return hashlib.sha256(_BUCKET_CONTEXT + name).digest()[:16]


def _quota_exceeded(
    counter: str, limit: int, day: int, now: datetime, left: int | None = None
) -> QuotaExceeded:
    midnight = datetime.fromtimestamp(day + _DAY, UTC)
    refused = QuotaExceeded(
        f"the daily {counter} quota of {limit} is used up; it renews at 00:00 UTC",
        max((midnight - now) / timedelta(seconds=1), 1.0),
    )
    if left is not None:
        refused.seen = (counter, limit, day, max(left, 0))
    return refused


def _insert_ignoring_conflict(
    connection: Connection, table: Table, rows: list[dict[str, object]]
) -> None:
    # Another node may insert the same key first; its row is as good as ours.
    if connection.dialect.name == "postgresql":
        connection.execute(postgresql.insert(table).on_conflict_do_nothing(), rows)
    else:
        connection.execute(sqlite.insert(table).on_conflict_do_nothing(), rows)


def _gcra(limit: RateLimit, cost: int) -> tuple[float, float, float]:
    """(emission interval, this call's increment, tolerance) of GCRA for `limit`.
    Raises `RateLimited` for a cost above the burst, which can never pass."""
    interval = 1.0 / limit.per_second
    tolerance = limit.burst * interval
    if cost > limit.burst:
        raise RateLimited(
            f"a call of {cost} items exceeds this identity's burst of {limit.burst}; "
            "send smaller batches",
            tolerance,
        )
    return interval, cost * interval, tolerance


def _rounding(now: float, tolerance: float) -> float:
    """What the bucket's float arithmetic may round against a call: ``tat + increment -
    now`` is computed at the scale of the epoch seconds (an ulp of 2.4e-7 s today),
    so a call of exactly the burst on a full bucket could come out a hair above the
    tolerance and be refused 'retry after 0.00s'. Four ulps of that scale are let
    through, a few microseconds' credit at most."""
    return 4 * math.ulp(abs(now) + tolerance)


def _rate_limited(limit: RateLimit, retry_after: float) -> RateLimited:
    return RateLimited(
        f"rate limit of {limit.per_second:g}/s (burst {limit.burst}) exceeded; "
        f"retry after {retry_after:.2f}s",
        retry_after,
    )


def _window_of(guard: OracleGuard, now: datetime) -> int:
    """The first second of the guard's window under way at `now`: windows are named by
    their first second, so that one purge horizon fits all."""
    return int(now.timestamp()) // guard.window_seconds * guard.window_seconds


def guard_horizon(guard: OracleGuard, now: datetime) -> int:
    """The first second of the oldest window whose rows the purge keeps for `guard`:
    the window before the one under way, which `Limits.watch` reads, and one more for a
    node whose clock is behind by up to a window; at least `GUARD_KEEP_FLOOR` back, so
    a policy that lengthens a short window to a day still counts the day's cards."""
    kept = max(2 * guard.window_seconds, GUARD_KEEP_FLOOR)
    return _window_of(guard, now) - kept


def _read_until(guard: OracleGuard, window: int) -> int:
    """The first second at which `Limits.watch` no longer reads a row of `window`: the
    start of the first window whose previous one begins after it (for a window of the
    current length, the end of the window after it)."""
    size = guard.window_seconds
    return ((window + size) // size + 1) * size


def _clears_at(
    guard: OracleGuard, seen: dict[bytes, int], sent: set[bytes], now: datetime
) -> float | None:
    """When a call sending `sent` to a bucket whose rows read now are `seen` (each item's
    latest window) would pass, if nothing else is sent meanwhile: once few enough of the
    bucket's items are still read for `sent` to fit beside them (`RateLimits.watch`
    counts each item sent as new, one the bucket holds too). None if it never would
    (`sent` alone is over the limit)."""
    room = guard.max_pans_per_bucket - len(sent)
    if room < 0:
        return None
    # Each item counts until its rows stop being read, the latest first.
    until = sorted((_read_until(guard, w) for w in seen.values()), reverse=True)
    return float(until[room]) if room < len(until) else now.timestamp()


def _oracle_suspected(
    guard: OracleGuard, now: datetime, clears_at: float | None = None
) -> OracleSuspected:
    # Retry-After: when the call would pass (`_clears_at`). A call that alone sends more
    # than the limit to one bucket never will: it is told the end of the window under
    # way, as before, a pause for a client that retries and no promise.
    if clears_at is None:
        clears_at = float(_window_of(guard, now) + guard.window_seconds)
    return OracleSuspected(
        f"more than {guard.max_pans_per_bucket} different card numbers with one BIN and "
        f"last four in {guard.window_seconds}s (a fresh token of a format that hides few "
        "cards counts as one each, the same card's too): refused as a suspected guessing "
        "attack (the policy's oracle_guard sets the limit)",
        max(clears_at - now.timestamp(), 1.0),
    )


class Limits:
    """The checks. Their state is in the database; `early` only remembers, in this
    process, what the early rate check last read (`EarlyRoom`), and `_quota_left` what
    a refused quota charge last saw left of a day's quota."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.early = EarlyRoom(clock)
        # (identity, counter, daily limit) -> (day, units left when a charge was refused),
        # oldest first; read and written by request threads (`_quota_lock`).
        self._quota_left: dict[tuple[str, str, int], tuple[int, int]] = {}
        self._quota_lock = threading.Lock()

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
        """Charge `cost` units to `identity`'s rate limit.

        Raises `RateLimited` (nothing charged) when the bucket lacks them; a cost above
        the burst can never pass and says so. With `clock`, a refusal is checked once
        more at the clock's time: the charge may have waited for the bucket's row lock
        while another transaction charged it at a later `now` (on PostgreSQL, under
        batch load, a limit with room to spare was refused 'retry after 0.6s').

        `deferrable`: inside a commit group's unguarded run, add the cost to the
        group's sum for `identity`, charged just before the commit (a refusal there
        reruns the group with every charge made at once). Only for a caller whose work
        after the charge is all undone by a rollback and sends nothing anywhere.
        """
        interval, increment, tolerance = _gcra(limit, cost)
        charges = self._group_charges(connection) if deferrable else None
        if charges is not None:
            charges.add(identity, limit, cost, now, clock)
            return
        for _ in range(3):
            room = tolerance + _rounding(now, tolerance)
            charge = [now, now, increment, identity, now, now, increment, now, room]
            if fetch_all(connection, _CHARGE_SQL, charge):
                return
            rows = fetch_all(connection, _TAT_SQL, [identity])
            tat = rows[0][0] if rows else None
            if tat is None:
                _insert_ignoring_conflict(
                    connection, rate_state, [{"identity": identity, "tat": now}]
                )
                continue
            later = now if clock is None else clock()
            if later > now:
                now, clock = later, None
                continue
            self.early.forget(identity)  # its next early check reads the bucket
            raise _rate_limited(limit, max(float(tat), now) + increment - tolerance - now)
        raise RateLimited("rate limit state is contended; retry", interval)  # pragma: no cover

    def _group_charges(self, connection: Connection) -> GroupCharges | None:
        """The sums of the commit group `connection` runs in its unguarded run, made
        just before its commit; None outside one (charge at once)."""
        steps = before_commit(connection)
        if steps is None:
            return None
        charges = steps.get(_GROUP_CHARGES)
        if charges is None:
            charges = steps[_GROUP_CHARGES] = GroupCharges(self, connection)
            rerun = before_rerun(connection)
            if rerun is not None:  # its guarded run locks these rows first, in order
                rerun[_GROUP_CHARGES] = charges.lock_for_rerun
        assert isinstance(charges, GroupCharges)  # noqa: S101 - only this module sets it
        return charges

    def check_rate(
        self, connection: Connection, identity: str, limit: RateLimit, cost: int, now: float
    ) -> int:
        """Raise `RateLimited` if charging `cost` now would fail; charge nothing. A cheap
        early refusal before expensive work (HSM calls); the charge itself is made in the
        operation's transaction by `charge_rate`. Returns the units the bucket had room
        for (`cost` among them)."""
        interval, increment, tolerance = _gcra(limit, cost)
        rows = fetch_all(connection, _TAT_SQL, [identity])
        tat = rows[0][0] if rows else None
        # `charge_rate`'s expression, to the last bit: the check must agree with it.
        lead = increment if tat is None else max(float(tat), now) + increment - now
        if tat is not None and lead > tolerance + _rounding(now, tolerance):
            raise _rate_limited(limit, max(float(tat), now) + increment - tolerance - now)
        # Room for this call and as many more as fit now (an over-count only lets one
        # more call reach the charge, which refuses it); an unbounded rate has its burst.
        more = (tolerance - lead) / interval if interval > 0 else float(limit.burst)
        return cost + int(min(more, limit.burst)) if math.isfinite(more) else cost

    @staticmethod
    def check_call_buckets(guard: OracleGuard, pans: Sequence[Pan], now: datetime) -> None:
        """Raise `OracleSuspected` when one call alone sends more different cards of one
        bucket than the guard allows in any span of its window's length (checked on the
        digits, before any HSM call; `watch` counts them with the cards already seen,
        in the transaction, and would refuse such a call at any time)."""
        if len(pans) <= guard.max_pans_per_bucket:
            # No bucket can hold more cards than the call sends: nothing to hash (a
            # single tokenize's bucket hash was ~1% of a worker's GIL samples).
            return
        per_bucket: dict[bytes, set[str]] = {}
        for pan in pans:
            per_bucket.setdefault(oracle_bucket(pan), set()).add(pan.reveal())
        if any(len(cards) > guard.max_pans_per_bucket for cards in per_bucket.values()):
            raise _oracle_suspected(guard, now)

    def charge_quota(
        self,
        connection: Connection,
        identity: str,
        quota: Quota,
        cost: int,
        now: datetime,
        *,
        counter: str = DETOKENIZE_QUOTA,
        deferrable: bool = False,
    ) -> None:
        """Count `cost` against `identity`'s daily quota. Raises `QuotaExceeded` (nothing
        counted) past `quota.detokenize_per_day`, with the seconds to the next UTC day.

        `deferrable`: as `charge_rate`'s; a group charges each identity's rate sum, then
        its quota sum, identities sorted, so every group locks those rows in one order."""
        charges = self._group_charges(connection) if deferrable else None
        if charges is not None:
            charges.add_quota(identity, quota, cost, now, counter)
            return
        day = int(now.timestamp()) // _DAY * _DAY  # the UTC day's first second
        limit = quota.detokenize_per_day
        key = and_(
            usage_counters.c.identity == identity,
            usage_counters.c.counter == counter,
            usage_counters.c.window == day,
        )
        for _ in range(2):
            bumped = connection.execute(
                update(usage_counters)
                .where(key, usage_counters.c.count + cost <= limit)
                .values(count=usage_counters.c.count + cost)
            )
            if bumped.rowcount == 1:
                return
            used = connection.execute(select(usage_counters.c.count).where(key)).scalar()
            if used is None and cost <= limit:
                _insert_ignoring_conflict(
                    connection,
                    usage_counters,
                    [{"identity": identity, "counter": counter, "window": day, "count": 0}],
                )
                continue
            break
        raise _quota_exceeded(counter, limit, day, now, left=limit - (used or 0))

    def refuse_spent_quota(
        self,
        identity: str,
        quota: Quota,
        cost: int,
        now: datetime,
        *,
        counter: str = DETOKENIZE_QUOTA,
    ) -> None:
        """Raise `QuotaExceeded` when a refusal this process learnt today
        (`learn_quota`) saw less than `cost` left: a day's count only grows, so
        `charge_quota` would refuse it too. Before the transaction: a refusal there
        reruns its whole commit group. Another node's spending meanwhile is refused by
        the charge, once per process."""
        day = int(now.timestamp()) // _DAY * _DAY
        limit = quota.detokenize_per_day
        with self._quota_lock:
            seen = self._quota_left.get((identity, counter, limit))
        if seen is not None and seen[0] == day and cost > seen[1]:
            raise _quota_exceeded(counter, limit, day, now)

    def learn_quota(self, identity: str, refused: QuotaExceeded) -> None:
        """Remember what `refused` (a `charge_quota` refusal that reached its caller)
        saw left of `identity`'s day. Only once it reached the caller: its transaction
        then committed, so its read held no other operation's charge that a rollback
        undid (inside a commit group's first run, a refusal is not handed out, and the
        group runs again)."""
        if refused.seen is None:
            return
        counter, limit, day, left = refused.seen
        key = (identity, counter, limit)
        with self._quota_lock:
            self._quota_left.pop(key, None)  # back in at the newest end
            if len(self._quota_left) >= EARLY_ROOM_ENTRIES:  # bounded: drop the oldest
                del self._quota_left[next(iter(self._quota_left))]
            self._quota_left[key] = (day, left)

    def watch(
        self,
        connection: Connection,
        identity: str,
        guard: OracleGuard,
        items: Iterable[tuple[bytes, bytes]],
        now: datetime,
    ) -> None:
        """Record each (bucket, item) pair `identity` sent; raise `OracleSuspected`
        when a bucket would hold more than the guard's limit of distinct items in the
        current window and the one before it together (the caller's transaction,
        rolled back on the raise, then records nothing; on PostgreSQL the rows are
        written before the check).

        Counting the window before too is the strict form of a sliding window: every
        span of `window_seconds` ending now lies within those two windows, so no such
        span admits more than the limit, where fixed windows admitted the limit in the
        last seconds of one window and again in the first of the next. The weighted
        sliding-window counter (the earlier window's count scaled by how much of it the
        span still covers) was not taken: guesses sent at the very end of the earlier
        window count for almost nothing by the end of the next, so it still admits
        nearly twice the limit in one span, the attack's own shape. The price: a bucket
        filled stays full until its rows leave the read, one to two windows later."""
        window = _window_of(guard, now)
        previous = window - guard.window_seconds
        ahead = window + guard.window_seconds  # the last window read (`_SEEN_SQL`)
        wanted: dict[bytes, set[bytes]] = {}
        for bucket, item in items:
            wanted.setdefault(bucket, set()).add(item)
        # bucket -> item -> the latest window it was seen in (an item may have a row in
        # both windows read).
        seen_by_bucket: dict[bytes, dict[bytes, int]] = {}
        buckets = list(wanted)
        # One query per 500 buckets, not one per bucket: a batch of 1,000 cards spans
        # about as many buckets (issue 21: a thousand SELECTs per batch).
        # On the driver's cursor (`vault.storage.rawsql`): the committer runs these
        # statements for every guarded call. On PostgreSQL the read and the insert are
        # one statement (one round trip fewer per call): its CTE reads the rows as they
        # were before the insert, which writes every item sent, those already seen
        # included (ON CONFLICT skips them). A refusal below raises, and every caller's
        # transaction (or savepoint) then rolls that insert back.
        both = connection.dialect.name == "postgresql"
        for start in range(0, len(buckets), 500):
            chunk = buckets[start : start + 500]
            if both:
                sent = [(b, item) for b in chunk for item in wanted[b]]
                sql, in_list = _SEEN_THEN_WATCH_SQL, 0
                params = [
                    chunk,
                    identity,
                    previous,
                    ahead,
                    identity,
                    window,
                    [b for b, _ in sent],
                    [item for _, item in sent],
                ]
            else:
                probe = [identity, previous, ahead, *chunk]
                sql, in_list, params = _SEEN_SQL, len(chunk), probe
            for bucket, seen_in, item in fetch_all(connection, sql, params, in_list=in_list):
                held = seen_by_bucket.setdefault(bytes(bucket), {})
                held[bytes(item)] = max(int(seen_in), held.get(bytes(item), int(seen_in)))
        rows: list[tuple[str, bytes, int, bytes]] = []
        refused: dict[bytes, float | None] = {}
        for bucket, new_items in wanted.items():
            seen = seen_by_bucket.get(bucket, {})
            # Each item sent counts as a new one, a card already seen included, so that
            # the answer depends on how many the bucket holds, never on which (atk47):
            # counting the union, a caller that filled the bucket with made-up cards
            # was answered for a card the bucket held (the shop's customer's, or any
            # shopper's in the captures' count) and refused for any other, a refusal
            # that counts nothing, so it told the real card among its ~10^5 candidates
            # at its rate limit. Now every wrong guess fills one place and a full
            # bucket refuses every card, a card it holds too, until its rows age out.
            if len(seen) + len(new_items) > guard.max_pans_per_bucket:
                refused[bucket] = _clears_at(guard, seen, new_items, now)
                continue
            # A card seen only in the window before gets a row in this one too: sent
            # now, it must still count through the next window.
            rows.extend(
                (identity, bucket, window, item)
                for item in new_items
                if seen.get(item, previous) < window
            )
        if refused:
            # The call passes once every bucket it overfills does.
            times = list(refused.values())
            clears = None if None in times else max(r for r in times if r is not None)
            suspected = _oracle_suspected(guard, now, clears)
            suspected.full = tuple(refused)
            raise suspected
        if not both:
            insert_rows(connection, _WATCH_INTO, rows, then="ON CONFLICT DO NOTHING")

    def purge_windows(
        self,
        connection: Connection,
        now: datetime,
        *,
        keep_seconds: int,
        guards: Mapping[str, OracleGuard] | None = None,
    ) -> int:
        """Delete guard rows and counters older than `keep_seconds`, and rate buckets
        that are full again (`RATE_KEEP_SECONDS` past their time); return how many.

        `guards`: each identity's guard in the policy in force. Its rows are kept only
        while its guard may read them (`guard_horizon`), not the longest guard's 62
        days (rl38: a stolen certificate's guesses at its full rate, and every real
        card, were kept 31 times as long as a day's guard reads them). An identity the
        policy does not name keeps the longest guard's horizon."""
        # A bucket whose theoretical arrival time has passed charges exactly as a bucket
        # without a row (the charge and the check take max(tat, now)), so forgetting it
        # changes no answer. Without this every key ever charged was kept for ever: each
        # client address (IPv6 /64) anyone on the internet sent the capture listener, and
        # each capture session, one row each (the capture review).
        stale = now.timestamp() - RATE_KEEP_SECONDS
        removed = connection.execute(delete(rate_state).where(rate_state.c.tat < stale)).rowcount
        horizon = int(now.timestamp()) - max(keep_seconds, MAX_WINDOW_SECONDS)
        removed += connection.execute(
            delete(usage_counters).where(usage_counters.c.window < horizon)
        ).rowcount
        # The guard reads the window before the one under way as well (`watch`): for
        # the longest window that one began up to two window lengths ago.
        watched = int(now.timestamp()) - max(keep_seconds, 2 * MAX_WINDOW_SECONDS)
        removed += connection.execute(
            delete(oracle_watch).where(oracle_watch.c.window < watched)
        ).rowcount
        for identity, guard in sorted((guards or {}).items()):
            # By the primary key's first column: one identity's rows, not the table.
            removed += connection.execute(
                delete(oracle_watch).where(
                    oracle_watch.c.identity == identity,
                    oracle_watch.c.window < guard_horizon(guard, now),
                )
            ).rowcount
        return int(removed)
