"""Detokenize, masked or in full as the caller's policy allows; one path for one token
and for many.

IN PCI SCOPE, holds card data.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection

from audit.log import DetailValue, Outcome
from policies.models import Action, Reveal, Scope
from vault.errors import (
    BatchItemInvalid,
    IntegrityError,
    QuotaExceeded,
    TokenExpired,
    TokenNotFound,
    VaultError,
)
from vault.models import MAX_BATCH, CallContext, Pending, Revealed
from vault.operations._early import EarlyRate
from vault.operations._guesses import missed_tokens


def _unless_refused(raw: list[Revealed] | VaultError) -> list[Revealed] | None:
    """A transaction's answer as is when it revealed every token; None when it answers
    a refusal (a missing token: raised, and audited, by `finish`)."""
    return None if isinstance(raw, VaultError) else raw


class RevealOperations(EarlyRate):
    """Reveal operations of the vault."""

    def _reveal(
        self,
        ctx: CallContext,
        token_list: Sequence[str],
        action: Action,
        *,
        masked_only: bool = False,
        batch: bool = False,
    ) -> Pending[list[Revealed]]:
        """The one reveal path, up to its transaction's submission (`Pending`; its
        `finish()` is the synchronous call): a single call is a batch of one. Charges one
        rate unit per token and (for detokenize) one unit of the daily quota."""
        rules = self._authorize(ctx, action)
        reveal = Reveal.MASKED if masked_only else rules.reveal
        domains = self._policy.readable_domains(ctx.identity)
        reveals = len(token_list) if action is Action.DETOKENIZE else 0
        # Outside PCI scope no expiry (review 31, R31-1): a hosted capture answers anyone
        # holding a card number the token the shop's domain holds for it, so an adapter
        # that read that token's expiry joined a full PAN to its expiry outside scope.
        # The relay still puts it into the acquirer's request, inside the vault.
        shows_expiry = rules.scope is Scope.IN

        def work(connection: Connection) -> list[Revealed] | VaultError:
            # The rate charge joins its commit group's sum, made just before the commit
            # (as tokenize's): charged one by one, each reveal locked the identity's
            # bucket row until its group's commit, and the other worker's group waited
            # for it (issue 21: ~0.47 ms of lock wait per detokenize on PostgreSQL).
            # Nothing here is sent before the commit; a spent bucket was refused early.
            # The quota charge is deferred with it, and the group charges each identity's
            # bucket then its quota, identities in one order: deferring the rate alone
            # locked the quota row first (a deadlock with a rerun, review 12), and
            # charging a quota reveal's rate at once locked buckets in call order (a
            # deadlock with another worker's deferred charges, review 13).
            self._charge(connection, ctx, rules, cost=len(token_list), reveals=reveals)
            out, events = [], []
            for index, token in enumerate(token_list):
                try:
                    row = self._live_row(connection, token, domains, shared=True)
                    card = self._open_card(row)
                except (TokenNotFound, TokenExpired, IntegrityError) as exc:
                    # Returned, not raised: the charge commits. A miss costs what a hit
                    # costs, or guessing tokens would be free (and audited for free).
                    return self._item_error(exc, index, batch=batch)
                details: dict[str, DetailValue] = {"reveal": reveal.value}
                if batch:
                    details["batch_index"] = index
                events.append(
                    self._audit_event(
                        ctx, action, Outcome.SUCCESS, token_id=row.id, details=details
                    )
                )
                out.append(
                    Revealed(
                        token=token,
                        masked=card.pan.masked(),
                        pan=card.pan if reveal is Reveal.FULL else None,
                        expiry=card.expiry if shows_expiry else None,
                        cardholder_name=card.cardholder_name if reveal is Reveal.FULL else None,
                    )
                )
            self._audit.append_many(connection, events)
            return out

        with self._audited_refusal(ctx, action):
            self._refuse_guessed(ctx, rules, token_list)
            self._refuse_spent(ctx, rules, len(token_list), reveals=reveals)
            submitted = self._submit(work)

        def finish() -> list[Revealed]:
            with self._audited_refusal(ctx, action):
                try:
                    answer = self._settle(submitted, work)
                except QuotaExceeded as refused:
                    self._limits.learn_quota(ctx.identity, refused)
                    raise
                if isinstance(answer, VaultError):
                    # A miss counts under the guard (session 37: sweeps of a bucket).
                    self._count_missed(ctx, rules, missed_tokens(answer, token_list))
                    raise answer
                return answer

        return Pending(submitted, _unless_refused, finish)

    def detokenize_pending(
        self, ctx: CallContext, token: str, *, masked_only: bool = False
    ) -> Pending[Revealed]:
        """`detokenize` (or with `masked_only`, `detokenize_masked`), handed to the group
        committer and not waited for (`Pending`); raises at once what it raises before
        its transaction."""
        action = Action.DETOKENIZE_MASKED if masked_only else Action.DETOKENIZE
        calls = self._reveal(ctx, [token], action, masked_only=masked_only)
        return Pending(
            calls.committed,
            lambda raw: None if (revealed := calls.quick(raw)) is None else revealed[0],
            lambda: calls.finish()[0],
        )

    def detokenize(self, ctx: CallContext, token: str) -> Revealed:
        """Return the PAN behind `token` if the caller's policy reveals it in full, else
        only the masked PAN. Raises `PolicyDenied`, `TokenNotFound` (also for a token of
        a domain the caller may not read), `TokenExpired`, `IntegrityError`,
        `RateLimited`, `QuotaExceeded`, `StorageUnavailable`, `AuditWriteFailed`,
        `HSMUnavailable`."""
        return self._reveal(ctx, [token], Action.DETOKENIZE).finish()[0]

    def detokenize_masked(self, ctx: CallContext, token: str) -> Revealed:
        """Return only the masked PAN (BIN6 and last four) behind `token`."""
        return self._reveal(ctx, [token], Action.DETOKENIZE_MASKED, masked_only=True).finish()[0]

    def detokenize_batch(self, ctx: CallContext, token_list: Sequence[str]) -> list[Revealed]:
        """Detokenize every token, all or nothing, in order. Raises `BatchItemInvalid`
        naming the first token that is missing, expired or fails authentication."""
        if not 1 <= len(token_list) <= MAX_BATCH:
            self._authorize(ctx, Action.DETOKENIZE)
            raise BatchItemInvalid(0, "invalid_request", f"a batch has 1 to {MAX_BATCH} items")
        return self._reveal(ctx, token_list, Action.DETOKENIZE, batch=True).finish()
