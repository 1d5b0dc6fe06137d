"""Delete (crypto-shred one token) and the purge of expired tokens.

IN PCI SCOPE, holds card data.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from sqlalchemy import Connection, and_, bindparam, select, text

from audit.log import AuditEvent, Outcome
from policies.models import Action
from vault.errors import TokenNotFound
from vault.limits import MAX_WINDOW_SECONDS
from vault.models import CallContext
from vault.operations._early import EarlyRate
from vault.operations._guesses import missed_tokens
from vault.operations._idempotency import forget_keys
from vault.operations.capture import purge_capture_sessions
from vault.storage.schema import tokens

_PURGE_LOCK_KEY: Final = 0x436F667250
# The hot path's statements, built once: building and cache-keying a statement per call
# cost more Python time than running it.
# The purge's read of expired live tokens, through the partial index of migrations 0015
# and 0025 (``ix_tokens_live_expiring``, whose predicate ``expires_at IS NOT NULL AND
# deleted_at IS NULL`` this implies):
# a purged token keeps its row and its expiry, so through the plain expiry index every
# run walked every token ever purged first (a cost growing for ever). In its order, oldest
# expiry first: without it PostgreSQL's planner, taking the two conditions as
# independent, expected 500 matches early in a sequential scan and read the whole table
# (1.1 M rows, 134 ms, to find none: the live tokens are the ones not yet expired).
_EXPIRED_LIVE: Final = (
    select(tokens.c.id)
    .where(and_(tokens.c.expires_at <= bindparam("now"), tokens.c.deleted_at.is_(None)))
    .order_by(tokens.c.expires_at)
    .limit(bindparam("batch"))
)


class DeleteOperations(EarlyRate):
    """Delete operations of the vault."""

    def delete(self, ctx: CallContext, token: str) -> bool:
        """Crypto-shred `token`: its ciphertext and fingerprint are erased, a tombstone
        and the audit trail remain. Returns False if it was already deleted.
        Raises `TokenNotFound` for a token that never existed or that another domain
        owns (a write never crosses domains, and the answer does not say which)."""
        rules = self._authorize(ctx, Action.DELETE)
        domain = rules.domain_of(ctx.identity)

        def work(connection: Connection) -> bool | TokenNotFound:
            self._charge(connection, ctx, rules)
            row = connection.execute(
                select(tokens.c.id, tokens.c.deleted_at, tokens.c.domain).where(
                    tokens.c.token == token
                )
            ).first()
            if row is None or row.domain != domain:
                # Returned, not raised: the charge commits (a miss costs what a hit
                # costs) and the commit group it met does not run again.
                return TokenNotFound("no such token")
            # Read without a lock: shredded since by another delete or the purge, the
            # row is left and this delete says so (`_shred`).
            already = row.deleted_at is not None or not self._shred(
                connection, row.id, self._clock()
            )
            self._audit.append(
                connection,
                self._audit_event(
                    ctx,
                    Action.DELETE,
                    Outcome.SUCCESS,
                    token_id=row.id,
                    details={"result": "already deleted" if already else "shredded"},
                ),
            )
            return not already

        with self._audited_refusal(ctx, Action.DELETE):
            # A sweep of a bucket's tokens through deletes finds (and shreds) a
            # customer's card as a reads' sweep would (atk49a): counted the same way.
            self._refuse_guessed(ctx, rules, [token])
            self._refuse_spent(ctx, rules, 1)
            answer = self._transaction(work)
            if isinstance(answer, TokenNotFound):
                self._count_missed(ctx, rules, missed_tokens(answer, [token]))
                raise answer
            return answer

    def purge_expired(self, *, actor: str = "cofre purge", batch: int = 500) -> int:
        """Crypto-shred every expired token (each one audited), forget rate-limit and
        oracle-guard windows that have ended and idempotency keys recorded before the
        window (`forget_keys`); return how many tokens were shredded.

        On PostgreSQL one node at a time purges: each batch runs under a
        transaction-scoped advisory lock, and a node that does not get it stops (the
        holder is already purging). Raises `StorageUnavailable`."""
        total, first = 0, True
        while True:
            now = self._clock()

            def work(
                connection: Connection, now: datetime = now, first: bool = first
            ) -> tuple[int, int]:
                if not _purge_lock(connection):
                    return -1, 0  # another node holds the purge
                if first:
                    guards = {i: r.oracle_guard for i, r in self._policy.policy.identities.items()}
                    self._limits.purge_windows(
                        connection, now, keep_seconds=MAX_WINDOW_SECONDS, guards=guards
                    )
                    purge_capture_sessions(connection, now)
                rows = (
                    connection.execute(_EXPIRED_LIVE, {"now": now, "batch": batch}).scalars().all()
                )
                shredded = 0
                for token_id in rows:
                    # Read without a lock: a row made to live longer since (an update, a
                    # convergent tokenize) is left, and gets no entry (review 29c).
                    if not self._shred(connection, token_id, now, expired=True):
                        continue
                    shredded += 1
                    self._audit.append(
                        connection,
                        AuditEvent(
                            action="purge",
                            outcome=Outcome.SUCCESS,
                            actor=actor,
                            token_id=token_id,
                            details={"reason": "expired"},
                        ),
                    )
                return len(rows), shredded

            count, shredded = self._transaction(work)
            first = False
            if count < 0:
                return total
            total += shredded
            if count < batch:
                self._forget_keys(batch)
                return total

    def _forget_keys(self, batch: int) -> None:
        """Remove the idempotency key records older than the window, `batch` a
        transaction (each holds its rows' locks for one short DELETE), until none is
        left or another node took the purge. Not audited: a record holds no card data,
        and the tokenize entries that answered each key stay in the log."""
        cutoff = self._clock() - self._key_window

        def work(connection: Connection) -> int:
            if not _purge_lock(connection):
                return -1
            return forget_keys(connection, cutoff, batch)

        while self._transaction(work) == batch:
            pass


def _purge_lock(connection: Connection) -> bool:
    """Whether this node may purge now: on PostgreSQL, whether it got the purge's
    transaction-scoped advisory lock (one node at a time); elsewhere always."""
    if connection.dialect.name != "postgresql":
        return True
    return bool(
        connection.execute(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _PURGE_LOCK_KEY}
        ).scalar()
    )
