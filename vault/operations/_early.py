"""The early rate check: a spent rate limit refused before the committer and before any
HSM call (`EarlyRate._refuse_spent`).

A refused charge inside a commit group rolls the whole group back and runs every other
caller's operation in it again, one savepoint each; a caller past its limit that
reached the committer with every call would double the work of everyone it shares
groups with (issue 21's review: the reveals did, one rerun per refused call).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from cofre.errors import CofreError
from policies.errors import RateLimited
from policies.models import IdentityPolicy, RateLimit
from vault.errors import OracleSuspected
from vault.models import CallContext
from vault.operations._guesses import TokenGuesses


class EarlyRate(TokenGuesses):
    """Refuses, before the transaction, a call its rate charge would refuse."""

    def _refuse_spent(
        self, ctx: CallContext, rules: IdentityPolicy, cost: int, *, reveals: int = 0
    ) -> None:
        """Raise `RateLimited` if the caller's bucket lacks `cost` units now, or
        `QuotaExceeded` if its daily detokenize quota is known to lack `reveals`;
        charges nothing (the transaction's charges stay the limits). The bucket is read
        at most about once a second while it has room (`vault._early_room.EarlyRoom`)."""
        if reveals and rules.quota is not None:
            self._limits.refuse_spent_quota(ctx.identity, rules.quota, reveals, self._clock())
        if rules.rate_limit is not None:
            self._refuse_spent_key(ctx.identity, rules.rate_limit, cost)

    def _room_for(self, ctx: CallContext, limit: RateLimit, most: int) -> int:
        """How many units, up to `most`, the caller's bucket `limit` has room for now (at
        least one: `RateLimited` is raised when it has none), read from the bucket itself
        and admitted here as spent: a call whose cost is known only in its transaction (a
        lookup's tokens) sizes its answer to this and is charged the rest after its
        commit (`_charge_after`). A caller without a limit never comes here."""
        with self._storage(), self._reader.connect() as connection:
            now = self._clock()  # once connected: others commit charges meanwhile
            room = self._limits.check_rate(connection, ctx.identity, limit, 1, now.timestamp())
        room = max(1, min(room, most))
        self._limits.early.note(ctx.identity, limit, room, room)
        return room

    def _refuse_spent_key(self, key: str, limit: RateLimit, cost: int) -> None:
        """Raise `RateLimited` if bucket `key` lacks `cost` units now (`_refuse_spent`)."""
        if self._limits.early.admit(key, limit, cost):
            return
        with self._storage(), self._reader.connect() as connection:
            now = self._clock()  # once connected: others commit charges meanwhile
            room = self._limits.check_rate(connection, key, limit, cost, now.timestamp())
        self._limits.early.note(key, limit, room, cost)

    def charge_rate(self, key: str, limit: RateLimit, cost: int = 1) -> None:
        """`VaultCore.charge_rate`, refused before the committer when the bucket is
        spent. Review rev37c: a keyed charge (the capture listener's per-address and
        per-session limits, reached without a certificate) had no early check, so each
        request past the limit joined a commit group, its refusal there rolled the group
        back and every other caller's operation in it ran again, one savepoint each:
        one anonymous address past its limit reran every group it landed in
        (tests/vault/test_rev37c_keyed_charge_reruns.py)."""
        self._refuse_spent_key(key, limit, cost)
        super().charge_rate(key, limit, cost)

    def _charge_after(self, ctx: CallContext, rules: IdentityPolicy, cost: int) -> None:
        """Charge `cost` more units for a call already answered, in a transaction of its
        own, and as many as the bucket has room for when it lacks them (its answer is
        out: nothing to refuse; calls of the caller that overlapped it may have spent
        the room `_room_for` read). A bucket left empty refuses the caller's next calls
        early (`EarlyRoom.forget`). Never raises."""
        limit = rules.rate_limit
        if limit is None or cost <= 0:
            return
        with contextlib.suppress(CofreError), self._storage(), self._engine.begin() as connection:
            now = self._clock().timestamp()
            try:
                self._limits.charge_rate(connection, ctx.identity, limit, cost, now)
            except RateLimited:
                # The room the bucket has now (`check_rate` raises when it has none).
                room = self._limits.check_rate(connection, ctx.identity, limit, 1, now)
                self._limits.charge_rate(connection, ctx.identity, limit, min(room, cost), now)

    def _charge_refused(self, ctx: CallContext, rules: IdentityPolicy, cost: int) -> None:
        """Charge `cost` units for a call refused in its transaction after its HSM work
        (the oracle guard's refusal, which rolls back the call's own charge), in a
        transaction of its own: a refused batch of 1,000 cards had spent 1,000 HMACs
        for nothing and could be sent again at once (the batch review). A bucket that
        lacks the units is left as it is: the early check refuses its next call."""
        limit = rules.rate_limit
        if limit is None:
            return
        with contextlib.suppress(CofreError), self._storage(), self._engine.begin() as connection:
            now = self._clock().timestamp()
            self._limits.charge_rate(connection, ctx.identity, limit, cost, now)

    def _refuse_suspected(
        self,
        ctx: CallContext,
        rules: IdentityPolicy,
        guarded: Sequence[tuple[bytes, bytes]],
        cost: int,
    ) -> None:
        """Raise `OracleSuspected` before the commit group when one of `guarded`'s
        (bucket, item) pairs is of a bucket this process saw the guard refuse the caller
        (`_suspect`) and the guard, asked in a transaction of its own rolled back after,
        refuses the call now; charges `cost` units as the refusal in the group does. A
        full bucket refuses a card it holds too (atk47: `RateLimits.watch`).

        Why (fin37): the guard refuses in the group, after the call's HMACs, and the
        refusal rolled the whole group back, every other caller's operation in it run
        again: a certificate sending new cards of one full bucket reran a group with
        every unit of its rate (tests/vault/test_fin37_oracle_reruns.py)."""
        now = self._clock()
        if not self._suspected.suspected(ctx.identity, [b for b, _ in guarded], now.timestamp()):
            return
        try:
            with self._storage(), self._engine.connect() as connection:
                asked = connection.begin()
                try:
                    self._limits.watch(connection, ctx.identity, rules.oracle_guard, guarded, now)
                finally:
                    asked.rollback()  # counts nothing: the group's own watch does
        except OracleSuspected:
            if cost:
                self._charge_refused(ctx, rules, cost)
            raise

    def _suspect(
        self, ctx: CallContext, guarded: Sequence[tuple[bytes, bytes]], refused: OracleSuspected
    ) -> None:
        """Remember the buckets the guard found full (`refused.full`; else all of
        `guarded`'s) as refused to the caller in a commit group, until it clears, for
        `_refuse_suspected`. Only those (review rev38): a batch's thousand new buckets
        remembered with its one full bucket flushed the full ones of earlier refusals
        out of the memory, and their next guesses reran groups again."""
        clears_at = self._clock().timestamp() + refused.retry_after
        full = refused.full or tuple(b for b, _ in guarded)
        self._suspected.learn(ctx.identity, full, clears_at)
