"""A worker's leases of its callers' rate-limit buckets (`RateLeases`), a part of
`vault.limits` kept in a room of its own.

IN PCI SCOPE, as part of the vault's limits; it holds identities and counts, no card
data.

Why (issue 21, session 42): the rate charge was one ``UPDATE`` of the identity's
``rate_state`` row per commit group, a statement, a round trip and a row lock that every
worker's groups take in turn; the limit cost 7-9% of a node's single tokenize on
PostgreSQL. A group now charges its sum plus a lease of up to `LEASE_UNITS` more units,
and the worker's next groups within the lease's life admit calls against it in memory,
with no statement (what global rate limiters such as Envoy's do with local buckets).

Never more than the limit: a lease's units are charged as though admitted at the end of
its life (`virtual`, up to `LEASE_SECONDS` ahead), and a group uses them only while its
own instant is no later. The row then always holds a bucket at least as spent as the
admissions themselves would make it (GCRA's ``max(tat, now) + cost`` grows with its
arguments), so every call admitted conforms to the limit, as the exact charge's did
(`tests/vault/test_rate_leases.py` replays random admissions of several workers through
an exact GCRA). What it costs a caller: a bucket shows up to `held_units` fewer units of
room per worker (its lease and the instant it is charged at), so a caller at its limit
may be refused that much early, and a lease not used in its life is spent, not given
back. Both are at most 1/32 of the burst per worker, and a worker leases only while its
calls use leases up (`_Lease.demanded`: a lease left unused sends it back to exact
charges until a lease's life brings a lease's worth of calls), so unused leases cannot
outrun the rate (review 44b). Buckets of bursts under
`LEASE_MIN_BURST` are charged exactly, as before. A group that rolls back before its
COMMIT (it runs again guarded, charging each call exactly) gives back the units it
took (`vault.storage.groupcommit.after_rollback`, review 44).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from policies.models import RateLimit

__all__ = [
    "CHARGE_SQL",
    "LEASE_MIN_BURST",
    "LEASE_SECONDS",
    "LEASE_UNITS",
    "RateLeases",
    "lease_of",
    "rounding",
]

# The GCRA step in one conditional UPDATE (`vault.limits.Limits.charge_rate`), on the
# driver's cursor (`vault.storage.rawsql`, like the oracle guard's): SQLAlchemy's execute
# of the expression cost ~0.12 ms of Python a call (issue 21). RETURNING says whether
# the row moved (SQLite has it since 3.35). Parameters: start, start, increment,
# identity, start, start, increment, now, room; `start` is the instant the units are
# charged at, `now` for an exact charge, a lease's end for a lease.
CHARGE_SQL: Final = (
    "UPDATE rate_state SET tat = CASE WHEN tat > ? THEN tat ELSE ? END + ? "
    "WHERE identity = ? AND CASE WHEN tat > ? THEN tat ELSE ? END + ? - ? <= ? RETURNING 1"
)
LEASE_UNITS: Final = 64
LEASE_SECONDS: Final = 0.1
# A lease and its instant take at most 1/32 of a burst per worker (`lease_of`): a burst
# under this would lease fewer than 16 units, not worth the statement it saves.
LEASE_MIN_BURST: Final = 1024
_SHARE: Final = 64
_ENTRIES: Final = 1024

# Runs a charge of `units` at instant `start`; True if the bucket had room.
Charge = Callable[[float, int], bool]
# Leaves a step for after the group's commit.
OnCommit = Callable[[Callable[[], None]], None]


def rounding(now: float, tolerance: float) -> float:
    """What the bucket's float arithmetic may round against a call: ``tat + increment -
    now`` is computed at the scale of the epoch seconds (an ulp of 2.4e-7 s today),
    so a call of exactly the burst on a full bucket could come out a hair above the
    tolerance and be refused 'retry after 0.00s'. Four ulps of that scale are let
    through, a few microseconds' credit at most."""
    return 4 * math.ulp(abs(now) + tolerance)


def lease_of(limit: RateLimit) -> tuple[int, float]:
    """(units, seconds) of a lease of `limit`'s bucket; (0, 0.0) when it is charged
    exactly. Units and the seconds' worth of the rate are each at most 1/64 of the
    burst, so what one worker holds (`held_units`) is at most 1/32 of it."""
    if limit.burst < LEASE_MIN_BURST:
        return 0, 0.0
    share = limit.burst // _SHARE
    return min(LEASE_UNITS, share), min(LEASE_SECONDS, share / limit.per_second)


def held_units(limit: RateLimit) -> float:
    """The most units of `limit`'s bucket one worker's lease keeps from its other
    callers: the lease, and the rate of the seconds it is charged ahead."""
    units, seconds = lease_of(limit)
    return units + seconds * limit.per_second


@dataclass
class _Lease:
    """A worker's lease of one bucket, and what decides whether it takes the next."""

    left: int = 0  # units left
    taken: float = 0.0  # the instants it may be used between
    until: float = -math.inf
    generation: int = 0  # one more per grant: a give-back goes to its own lease only
    retry: float = 0.0  # no lease tried before (the bucket lacked room for one)
    # While not None: the start of a window of one lease's life and the units this
    # worker charged exactly in it; a lease is taken once they reach a lease's worth.
    since: float | None = None
    demand: int = 0

    def demanded(self, cost: int, now: float, seconds: float, units: int) -> bool:
        if self.since is None:
            return True
        if now < self.since or now - self.since > seconds:
            self.since, self.demand = now, 0
        self.demand += cost
        return self.demand >= units


class RateLeases:
    """One process's leases, by identity and limit. Read and written by the committer
    threads (`_lock`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[str, RateLimit], _Lease] = {}

    def charge(
        self,
        identity: str,
        limit: RateLimit,
        cost: int,
        now: float,
        *,
        run: Charge,
        on_commit: OnCommit,
        on_rollback: OnCommit,
    ) -> bool:
        """Cover a group's `cost` units at instant `now` from the identity's lease, or
        by charging the bucket (`run`) for them and a new lease, granted once the
        group commits (`on_commit`). What the group takes from a lease is given back
        if it rolls back before its COMMIT (`on_rollback`; review 44: a group rerun
        after another caller's refused charge spent the lease's units and then charged
        the same calls again, and such neighbours halved a caller's limit). False:
        charge the bucket exactly.

        A lease is used only between the instant it was taken and its end: a wall
        clock stepped back would otherwise admit, at an earlier instant, units charged
        as though used later (review 44). A new lease is taken only while this
        worker's calls use leases up: at first, and after a lease ended with units
        unused, the worker charges exactly until a lease's life brings a lease's
        worth of calls (review 44b: a caller whose calls came more than a life apart
        took a lease with each and left it unused, and the units spent so outran the
        rate that a later burst was refused after 65 calls of a room of 994)."""
        units, seconds = lease_of(limit)
        if units == 0:
            return False
        key = (identity, limit)
        with self._lock:
            lease = self._held.get(key)
            if lease is None:
                lease = _Lease(since=now)
                self._put(key, lease, now)
            usable = lease.taken <= now <= lease.until
            if usable and lease.left >= cost:
                lease.left -= cost
                on_rollback(functools.partial(self._give_back, lease, lease.generation, cost))
                return True
            if not usable and lease.left > 0:  # ended with units unused: they are spent
                lease.left, lease.since, lease.demand = 0, now, 0
            if not lease.demanded(cost, now, seconds, units) or now < lease.retry:
                return False
            left, generation = (lease.left, lease.generation) if usable else (0, -1)
            lease.left -= left  # toward this group's charge below
        end = now + seconds
        try:
            charged = run(end, cost - left + units)
        except BaseException:
            self._give_back(lease, generation, left)  # the statement failed: nothing moved
            raise
        if not charged:
            self._give_back(lease, generation, left)  # kept: this group is charged exactly
            with self._lock:
                lease.retry = end
            return False
        on_rollback(functools.partial(self._give_back, lease, generation, left))
        on_commit(functools.partial(self._grant, key, lease, units, now, end))
        return True

    def _grant(
        self, key: tuple[str, RateLimit], lease: _Lease, units: int, now: float, end: float
    ) -> None:
        with self._lock:
            lease.left, lease.taken, lease.until = units, now, end
            lease.generation += 1
            lease.since, lease.demand, lease.retry = None, 0, 0.0
            self._put(key, lease, now)

    def _give_back(self, lease: _Lease, generation: int, units: int) -> None:
        """Units a group took from the lease of `generation` and did not use: that
        lease's again, if it is still the one in force (its row charged, nothing
        admitted against them)."""
        with self._lock:
            if units and lease.generation == generation:
                lease.left += units

    def _put(self, key: tuple[str, RateLimit], lease: _Lease, now: float) -> None:
        """Keep `key`'s lease; past `_ENTRIES` keys (policies reloaded many times, many
        keyed buckets) first drop those past every instant they hold (a dropped one
        starts over: exact charges until a lease's worth of calls)."""
        if key not in self._held and len(self._held) > _ENTRIES:
            horizon = now - LEASE_SECONDS
            self._held = {
                k: v
                for k, v in self._held.items()
                if max(v.until, v.retry, v.since or -math.inf) >= horizon
            }
        self._held[key] = lease
