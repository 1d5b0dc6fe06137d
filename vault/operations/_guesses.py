"""The token-guess guard of the operations that read a token by its value (detokenize,
masked, batch, metadata, relay): a read of a token the vault does not hold counts under
the caller's oracle guard, and a bucket past it refuses every read of its tokens.

IN PCI SCOPE, holds card data (a guessed token may be a card number: only its HMAC
and hashed bucket are stored). Why: `vault._token_guesses`.
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.models import IdentityPolicy, OracleGuard
from vault._core import VaultCore
from vault._token_guesses import guess_buckets, guess_shapes
from vault.errors import BatchItemInvalid, OracleSuspected, TokenNotFound, VaultError
from vault.models import CallContext

# What the guard's item for a guessed token is an HMAC of, under the fingerprint key:
# never a card's own fingerprint, which the token rows hold.
_GUESS_MESSAGE = "cofre-token-guess:"


def missed_tokens(answer: VaultError, tokens: Sequence[str]) -> list[str]:
    """The token of `tokens` that `answer` (a read's refusal) says the vault does not
    hold, as a list: a single read's `TokenNotFound`, or a batch's item error naming
    it; empty for any other refusal."""
    if isinstance(answer, TokenNotFound) and len(tokens) == 1:
        return list(tokens)
    if isinstance(answer, BatchItemInvalid) and answer.item_code == TokenNotFound.code:
        return [tokens[answer.index]]
    return []


def _guessing(guard: OracleGuard, retry_after: float) -> OracleSuspected:
    return OracleSuspected(
        f"{guard.max_pans_per_bucket} different tokens the vault does not hold, with one "
        f"BIN and last four, read in {guard.window_seconds}s: refused as a "
        "suspected sweep of the token space (the policy's oracle_guard sets the limit)",
        max(retry_after, 1.0),
    )


class TokenGuesses(VaultCore):
    """Counts the tokens a caller reads and the vault does not hold, per bucket of the
    token's BIN, last four and length, and refuses a bucket past the guard."""

    def _refuse_guessed(
        self, ctx: CallContext, rules: IdentityPolicy, tokens: Sequence[str]
    ) -> None:
        """Raise `OracleSuspected` when one of `tokens` is in a bucket this process saw
        refused to the caller (whether or not the vault holds the token: a sweep's right
        guess is answered as its wrong ones). Before the transaction; reads nothing."""
        now = self._clock().timestamp()
        shapes = guess_shapes(self._policy.policy, ctx.identity)
        until = self._guessed.refused_until(ctx.identity, tokens, now, shapes)
        if until is not None:
            raise _guessing(rules.oracle_guard, until - now)

    def _count_missed(self, ctx: CallContext, rules: IdentityPolicy, tokens: Sequence[str]) -> None:
        """Count `tokens`, read by the caller and not held by the vault (their read
        committed its charge already), under its oracle guard, in a transaction of its
        own. Raises `OracleSuspected` (and remembers the bucket) for the miss that makes
        `max_pans_per_bucket` in the bucket: that read is refused instead of answered
        404, and so is every later read of the bucket's tokens. A caller gets at most
        `max_pans_per_bucket` answers that tell a guess apart per bucket and window,
        the refused one included (a 429 there said "not this one")."""
        shapes = guess_shapes(self._policy.policy, ctx.identity)
        guarded: list[tuple[bytes, bytes]] = []
        for token in tokens:
            if buckets := guess_buckets(token, shapes):
                item = self._fingerprints(_GUESS_MESSAGE + token)[-1]
                guarded.extend((bucket, item) for bucket in buckets)
        if not guarded:
            return
        # One fewer than the cards' limit: a miss that fills the bucket is refused, so
        # that the guess after the limit, right or wrong, meets a bucket known full (a
        # read that is the right token is answered, and counts nothing).
        guard = rules.oracle_guard
        fewer = guard.model_copy(update={"max_pans_per_bucket": guard.max_pans_per_bucket - 1})
        now = self._clock()
        try:
            with self._storage(), self._engine.begin() as connection:
                self._limits.watch(connection, ctx.identity, fewer, guarded, now)
        except OracleSuspected as refused:
            clears_at = now.timestamp() + refused.retry_after
            self._guessed.learn(
                ctx.identity, [bucket for bucket, _ in guarded], clears_at, now.timestamp()
            )
            raise _guessing(guard, refused.retry_after) from None
