"""The rate and quota charges of one commit group (`GroupCharges`), a part of
`vault.limits` kept in a room of its own (that module was nearing 600 lines).

IN PCI SCOPE, as part of the vault's limits; it holds identities and counts, no card
data.

A group's first run sums its operations' charges per identity and makes them just before
its commit, identities sorted, rate before quota (session 37), so two groups lock those
rows in one order. If that run fails (a refused charge, a failed operation), the group
runs again guarded, each operation in a savepoint, charging at once in call order: a
caller whose charge the first run refused chose the order of the other callers' rows,
and the rerun deadlocked with any other group charging them sorted
(`tests/vault/test_rl38_rerun_charge_order.py`). So the guarded run first locks, in the
same order, every row the first run meant to charge (`GroupCharges.lock_for_rerun`, left
with `vault.storage.groupcommit.before_rerun`); its operations then charge rows it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Connection

from policies.models import Quota, RateLimit
from vault.storage.rawsql import fetch_all

if TYPE_CHECKING:
    from vault.limits import Limits

__all__ = ["GroupCharges"]

_DAY: Final = 86400
_LOCK_BUCKET: Final = "SELECT 1 FROM rate_state WHERE identity = ? FOR UPDATE"
_LOCK_QUOTA: Final = (
    'SELECT 1 FROM usage_counters WHERE identity = ? AND counter = ? AND "window" = ? FOR UPDATE'
)


class GroupCharges:
    """The rate and quota charges of one commit group, summed per identity and bucket
    (or quota), made just before its commit (`vault.storage.groupcommit.before_commit`)."""

    def __init__(self, limits: Limits, connection: Connection) -> None:
        self._limits = limits
        self._connection = connection
        # (identity, limit) -> [cost, latest now, clock]
        self._sums: dict[tuple[str, RateLimit], list[Any]] = {}
        # (identity, quota, counter) -> [cost, latest now]
        self._quotas: dict[tuple[str, Quota, str], list[Any]] = {}

    def add_quota(
        self, identity: str, quota: Quota, cost: int, now: datetime, counter: str
    ) -> None:
        held = self._quotas.setdefault((identity, quota, counter), [0, now])
        held[0] += cost
        held[1] = max(held[1], now)

    def add(
        self,
        identity: str,
        limit: RateLimit,
        cost: int,
        now: float,
        clock: Callable[[], float] | None,
    ) -> None:
        held = self._sums.setdefault((identity, limit), [0, now, clock])
        held[0] += cost
        held[1] = max(held[1], now)
        held[2] = clock or held[2]

    def _in_order(
        self,
    ) -> Iterator[tuple[str, list[tuple[str, RateLimit]], list[tuple[str, Quota, str]]]]:
        """Each identity, sorted, with its rate sums and then its quota sums (by
        counter): one order for every group, its first run and its guarded run alike."""
        identities = sorted({key[0] for key in self._sums} | {key[0] for key in self._quotas})
        for who in identities:
            rates = [key for key in self._sums if key[0] == who]
            quotas = sorted((key for key in self._quotas if key[0] == who), key=lambda k: k[2])
            yield who, rates, quotas

    def __call__(self) -> None:
        # GCRA charged `a` then `b` at one instant passes exactly when `a + b` does; the
        # latest instant of the group is used.
        for _, rates, quotas in self._in_order():
            for identity, limit in rates:
                cost, now, clock = self._sums[(identity, limit)]
                self._limits.charge_rate(self._connection, identity, limit, cost, now, clock=clock)
            for identity, quota, counter in quotas:
                cost, day_now = self._quotas[(identity, quota, counter)]
                self._limits.charge_quota(
                    self._connection, identity, quota, cost, day_now, counter=counter
                )

    def lock_for_rerun(self, connection: Connection) -> None:
        """Lock, on the guarded run's `connection`, the rows this group's first run
        charged (or meant to), in `__call__`'s order; rows not there yet are left to
        the charges. The refused identity's row is locked too: the rerun lets through
        its operations within the bucket's room, and those would lock it in call order
        again. SQLite's write transactions exclude each other: nothing to order."""
        if connection.dialect.name != "postgresql":
            return
        for who, rates, quotas in self._in_order():
            if rates:
                fetch_all(connection, _LOCK_BUCKET, [who])
            for key in quotas:  # the day `charge_quota` counts in
                day = int(self._quotas[key][1].timestamp()) // _DAY * _DAY
                fetch_all(connection, _LOCK_QUOTA, [who, key[2], day])
