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
from typing import Final

__all__ = ["GUESSED_ENTRIES", "GuessedBuckets", "guess_bucket"]

_GUESS_CONTEXT: Final = b"cofre-oracle-token-guesses\x00"
# The full buckets one process remembers; the oldest is dropped past this (it costs one
# more read, whose refusal in the database teaches it again).
GUESSED_ENTRIES: Final = 4096


def guess_bucket(token: str) -> bytes | None:
    """The guard's bucket of a read of `token`: its first six and last four digits and
    its length, hashed (the table holds no digits); None for a token no sweep can
    reach (not 12 to 19 digits: a UUID token has 122 random bits)."""
    if not (token.isascii() and token.isdigit() and 12 <= len(token) <= 19):
        return None
    name = f"{token[:6]}|{token[-4:]}|{len(token)}".encode("ascii")
    return hashlib.sha256(_GUESS_CONTEXT + name).digest()[:16]


class GuessedBuckets:
    """The guess buckets this process saw the database refuse, per identity, and the
    second each refusal clears. A read on a token of such a bucket is refused before
    its transaction, whatever the token, so the right guess is answered as a wrong one.
    A process that has not seen a bucket's refusal reads the token: it answers one more
    guess, and its miss is refused and learned (on each node and worker, once a window)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until: dict[tuple[str, bytes], float] = {}
        self._identities: dict[str, int] = {}

    def learn(self, identity: str, buckets: Iterable[bytes], clears_at: float) -> None:
        """Remember that `identity`'s `buckets` are refused until `clears_at`."""
        with self._lock:
            for bucket in buckets:
                key = (identity, bucket)
                if key not in self._until:
                    self._identities[identity] = self._identities.get(identity, 0) + 1
                self._until[key] = max(clears_at, self._until.get(key, 0.0))
                while len(self._until) > GUESSED_ENTRIES:
                    self._drop(next(iter(self._until)))

    def _drop(self, key: tuple[str, bytes]) -> None:
        del self._until[key]
        left = self._identities[key[0]] - 1
        if left:
            self._identities[key[0]] = left
        else:
            del self._identities[key[0]]

    def refused_until(self, identity: str, tokens: Iterable[str], now: float) -> float | None:
        """The latest second one of `tokens`' buckets is refused to `identity` until, or
        None when none is. Costs nothing for an identity with no full bucket."""
        if identity not in self._identities:
            return None
        latest = None
        with self._lock:
            for token in tokens:
                bucket = guess_bucket(token)
                if bucket is None or (until := self._until.get((identity, bucket))) is None:
                    continue
                if until <= now:
                    self._drop((identity, bucket))
                elif latest is None or until > latest:
                    latest = until
        return latest
