"""The token-guess guard's buckets, and what this process learned of full ones.

IN PCI SCOPE, as part of the vault's limits; it holds identities, hashed buckets and
times, no card data and no token.

A `pan_bin6_last4` token hides six random digits behind its card's BIN and last four
(about 9 x 10^5 tokens a bucket; a `pan_fpe` token as many): an identity that may read
a domain and knows a customer's BIN and last four could sweep that space with reads
that each answer 404 or the card (session 37). Each token an identity reads and the
vault does not hold counts under its oracle guard, in a bucket of the token's first
six, last four and length (`guess_bucket`, apart from the cards' buckets); past the
guard, every read of a token of that bucket is refused, the right token too
(`vault.operations._guesses`).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from policies.formats import FormatType

if TYPE_CHECKING:
    from policies.models import Policy

__all__ = ["GUESSED_ENTRIES", "GuessedBuckets", "guess_bucket", "guess_buckets", "guess_shapes"]

# A bucket's shape: a token length, and how many leading and trailing digits of a token
# of that length it keys on.
Shape = tuple[int, int, int]
# A shape's bucket is counted where it holds at most 10^9 tokens: a sweep of 10^9 takes 23
# days at 500 reads a second; a wider one is out of reach, and a coarse bucket is not
# worth its false refusals.
_SWEEPABLE_FREE_DIGITS: Final = 9
_LENGTHS: Final = range(12, 20)
_BIN6_LAST4: Final = (6, 4)
_DEFAULT_SHAPES: Final[tuple[Shape, ...]] = tuple((n, *_BIN6_LAST4) for n in _LENGTHS)

_GUESS_CONTEXT: Final = b"cofre-oracle-token-guesses\x00"
# The full buckets one process remembers per identity. Past them the identity is refused
# every guessable token until the last of them clears, and its buckets are let go: a
# process that dropped the oldest instead (review 37b) answered that bucket's right token
# again, so an identity cycling through more full buckets than this had every read
# answered, and one identity's misses made another's full buckets readable. No real
# client fills this many buckets of missing tokens in a window.
GUESSED_ENTRIES: Final = 4096


def guess_bucket(token: str) -> bytes | None:
    """The guard's bucket of a read of `token`: its first six and last four digits and
    its length, hashed (the table holds no digits); None for a token no sweep can
    reach (not 12 to 19 digits: a UUID token has 122 random bits)."""
    buckets = guess_buckets(token, _DEFAULT_SHAPES)
    return buckets[0] if buckets else None


def guess_buckets(token: str, shapes: Iterable[Shape]) -> list[bytes]:
    """The guard's buckets of a read of `token`, one per shape of `shapes` (`guess_shapes`:
    the digits the formats a reader may meet keep), hashed; empty for a token no sweep
    can reach (not 12 to 19 digits)."""
    if not (token.isascii() and token.isdigit() and 12 <= len(token) <= 19):
        return []
    out = []
    for length, leading, trailing in shapes:
        if length != len(token):
            continue
        name = f"{token[:leading]}|{token[len(token) - trailing :]}|{len(token)}"
        if (leading, trailing) != _BIN6_LAST4:
            name += f"|{leading}+{trailing}"
        out.append(hashlib.sha256(_GUESS_CONTEXT + name.encode("ascii")).digest()[:16])
    return out


def guess_shapes(policy: Policy, identity: str) -> tuple[Shape, ...]:
    """The bucket shapes of `identity`'s reads, per token length: the first six and last
    four, and for each digit format issued into a domain it may read (by an identity of
    that domain that may use it) its kept leading digits (at most six: a BIN-8 bucket
    lies inside its BIN-6 one) and trailing digits, where its bucket holds at most 10^9
    tokens; only the widest (a shape whose buckets lie inside another's is left out).

    Why (review 37b): a bucket of the token's first six and last four bounds a sweep only
    where the format keeps them. A `pan_last4` token's first six are random and a format
    keeping no trailing digits has random last four, so each guess of such a sweep fell
    in a bucket of its own and none ever filled."""
    rules = policy.identities.get(identity)
    kept: set[tuple[int, int]] = {_BIN6_LAST4}
    if rules is not None:
        readable = rules.read_domains | {rules.domain_of(identity)}
        for writer, theirs in policy.identities.items():
            if theirs.domain_of(writer) not in readable:
                continue
            for name in theirs.formats:
                spec = policy.format(name)
                if spec is not None and spec.type is not FormatType.UUID:
                    kept.add((min(spec.keep_leading, 6), spec.keep_trailing))
    shapes: list[Shape] = []
    for length in _LENGTHS:
        here = {k for k in kept if length - k[0] - k[1] <= _SWEEPABLE_FREE_DIGITS}
        shapes.extend(
            (length, *k)
            for k in sorted(here)
            if not any(o != k and o[0] <= k[0] and o[1] <= k[1] for o in here)
        )
    return tuple(shapes)


class GuessedBuckets:
    """The guess buckets this process saw the database refuse, per identity, and the
    second each refusal clears. A read on a token of such a bucket is refused before
    its transaction, whatever the token, so the right guess is answered as a wrong one.
    A process that has not seen a bucket's refusal reads the token: it answers one more
    guess, and its miss is refused and learned (on each node and worker, once a window).
    Each identity's memory is its own, `GUESSED_ENTRIES` buckets; an identity past them
    is refused every guessable token (`guess_bucket`) until the last of them clears."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # identity -> bucket -> the second its refusal clears.
        self._until: dict[str, dict[bytes, float]] = {}
        # identity -> the second its refusal of every guessable token clears.
        self._whole: dict[str, float] = {}

    def learn(self, identity: str, buckets: Iterable[bytes], clears_at: float, now: float) -> None:
        """Remember that `identity`'s `buckets` are refused until `clears_at` (`now` is
        the present second: buckets cleared by then are let go first)."""
        with self._lock:
            if identity in self._whole:
                self._whole[identity] = max(clears_at, self._whole[identity])
                return
            held = self._until.setdefault(identity, {})
            for bucket in buckets:
                held[bucket] = max(clears_at, held.get(bucket, 0.0))
            if len(held) > GUESSED_ENTRIES:
                for cleared in [b for b, until in held.items() if until <= now]:
                    del held[cleared]
            if len(held) > GUESSED_ENTRIES:
                # Past its memory: every guessable token, until the latest clears.
                self._whole[identity] = max(held.values())
                del self._until[identity]

    def refused_until(
        self,
        identity: str,
        tokens: Iterable[str],
        now: float,
        shapes: Iterable[Shape] = _DEFAULT_SHAPES,
    ) -> float | None:
        """The latest second one of `tokens`' buckets (of `shapes`) is refused to
        `identity` until, or None when none is. Costs nothing for an identity with no
        full bucket."""
        if identity not in self._until and identity not in self._whole:
            return None
        latest = None
        with self._lock:
            whole = self._whole.get(identity)
            if whole is not None and whole <= now:
                del self._whole[identity]
                whole = None
            held = self._until.get(identity, {})
            shapes = tuple(shapes)
            for bucket in (b for token in tokens for b in guess_buckets(token, shapes)):
                until = whole if whole is not None else held.get(bucket)
                if until is None:
                    continue
                if until <= now:
                    held.pop(bucket, None)
                elif latest is None or until > latest:
                    latest = until
            if identity in self._until and not held:
                del self._until[identity]
        return latest
