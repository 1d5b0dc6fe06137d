"""Review 44 (an attack on session 44's leases, `vault._rate_leases`): a group whose
unguarded run rolls back runs again guarded, charging each call exactly; the units its
first run took from a lease were spent in memory all the same, so every call of such a
group was paid twice. Another caller only has to have its charge refused in the groups
the victim's calls land in (two calls sent together when its bucket has room for one:
both pass the early check, their sum is refused at the group's charge; or a lock
timeout on a later row, with no attacker at all): one worker with a stopped clock
refused the victim after 527 of its 1,024 units, where the documented price is at most
what one worker's lease holds (~16 here). Now a group rolled back before its COMMIT
gives back what it took (`groupcommit.after_rollback`). SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from sqlalchemy import Connection, Engine, text

from policies.errors import RateLimited
from policies.models import RateLimit
from tests.support.groups import one_group
from vault._rate_leases import held_units, lease_of
from vault.limits import Limits
from vault.storage.groupcommit import GroupCommitter

_NOW = 1_780_000_000.0  # the clock stands still: the bucket never refills
_VICTIM = "spiffe://cofre/victim"
_THIEF = "spiffe://cofre/zz-thief"  # sorts after the victim: charged after it
_SMALL = RateLimit(per_second=1, burst=2)


def _victim(limits: Limits, limit: RateLimit) -> Callable[[Connection], str]:
    def work(c: Connection) -> str:
        limits.charge_rate(c, _VICTIM, limit, 1, _NOW, deferrable=True)
        return "ok"

    return work


def _refused_thief(limits: Limits) -> Callable[[Connection], str]:
    """A call whose charge the group refuses (its bucket has room for 1, it costs 2)."""

    def work(c: Connection) -> str:
        limits.charge_rate(c, _THIEF, _SMALL, 2, _NOW, deferrable=True)
        return "thief"

    return work


def _outcome(future: Future[Any]) -> str:
    error = future.exception(10)
    if error is None:
        return str(future.result())
    return "refused" if isinstance(error, RateLimited) else f"other {error!r}"


def _victim_admitted(engine: Engine, limit: RateLimit) -> int:
    """How many of the victim's calls pass, each second one in a group with the thief's
    refused call, before the victim is refused."""
    limits = Limits()
    committer = GroupCommitter(engine)
    with engine.begin() as c:
        c.execute(
            text("INSERT INTO rate_state (identity, tat) VALUES (:i, :t), (:j, :u)"),
            {"i": _VICTIM, "t": _NOW - 10_000, "j": _THIEF, "u": _NOW + 1.0},
        )
    admitted = 0
    try:
        while True:
            (alone,) = one_group(committer, [_victim(limits, limit)])  # takes a lease
            if _outcome(alone) != "ok":
                return admitted
            admitted += 1
            for _ in range(lease_of(limit)[0] or 16):
                victim, thief = one_group(
                    committer, [_victim(limits, limit), _refused_thief(limits)]
                )
                assert _outcome(thief) == "refused"
                if _outcome(victim) != "ok":
                    return admitted
                admitted += 1
    finally:
        committer.close()


def test_an_exact_bucket_is_charged_once_per_call(engine: Engine) -> None:
    """The control: a burst under 1,024 has no lease; the rerun's rollback undid the
    first run's charge, so the victim has its whole burst."""
    assert _victim_admitted(engine, RateLimit(per_second=1, burst=1023)) == 1023


def test_a_refused_neighbour_does_not_charge_a_lease_twice(engine: Engine) -> None:
    limit = RateLimit(per_second=1, burst=1024)
    admitted = _victim_admitted(engine, limit)
    assert limit.burst - held_units(limit) <= admitted <= limit.burst
