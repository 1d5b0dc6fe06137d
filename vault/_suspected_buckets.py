"""The oracle-guard buckets this process saw refused, per identity (fin37).

IN PCI SCOPE, as part of the vault's limits; it holds identities, hashed buckets and
times, no card data and no token.

The guard refuses a lookup or a convergent tokenize (and the card a relay's answer
stores) inside the commit group, after the call's HMACs: the refusal rolls the whole
group back and every other caller's operation in it runs again, one savepoint each. A
certificate sending new cards of one full bucket did that with every unit of its rate
(review rev37c left it as a bound). The process remembers the bucket of each such
refusal until it clears, and the identity's next call of that bucket is checked against
the guard before the group (`vault.operations._early.EarlyRate._refuse_suspected`).

Past `SUSPECTED_ENTRIES` buckets of one identity the ones clearing first are let go, and
the identity is checked before the group on every guarded call until the last of them
clears (review 39b): a certificate that filled one bucket first and 4,096 more kept that
one clearing first, so it was let go as soon as it was learnt again and each of its new
cards was refused in the group, rerunning it, at the certificate's rate.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterable
from typing import Final

__all__ = ["SUSPECTED_ENTRIES", "SuspectedBuckets"]

# The buckets one process remembers per identity. Past them the ones clearing first are
# let go, and every guarded call of the identity is checked before the group until they
# clear (one read transaction, rolled back, per call: the guard still decides).
SUSPECTED_ENTRIES: Final = 4096


class SuspectedBuckets:
    """The guard buckets this process saw refused to each identity, and the second
    each refusal clears."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # identity -> bucket -> the second its refusal clears.
        self._until: dict[str, dict[bytes, float]] = {}
        # identity -> the second the last bucket let go past its memory clears.
        self._past: dict[str, float] = {}

    def learn(self, identity: str, buckets: Iterable[bytes], clears_at: float) -> None:
        """Remember that the guard refused `identity` a call of `buckets` (one of them,
        at least, is full) until `clears_at`."""
        with self._lock:
            held = self._until.setdefault(identity, {})
            for bucket in buckets:
                held[bucket] = max(clears_at, held.get(bucket, 0.0))
            # All at once (review rev38): one scan of the memory per bucket let go made
            # a refused batch of 1,000 new buckets cost 4 million comparisons, held under
            # this lock and the interpreter's.
            if (excess := len(held) - SUSPECTED_ENTRIES) > 0:
                for bucket in heapq.nsmallest(excess, held, key=held.__getitem__):
                    # Let go, but not forgotten (review 39b): the one learnt last may
                    # be the one clearing first, and it is called again next.
                    until = held.pop(bucket)
                    self._past[identity] = max(until, self._past.get(identity, 0.0))

    def suspected(self, identity: str, buckets: Iterable[bytes], now: float) -> bool:
        """Whether one of `buckets` was refused to `identity` and has not cleared by
        `now`, or `identity` went past the memory and what it let go has not cleared
        (then any of `buckets`, if any). Costs nothing for an identity the guard never refused."""
        if identity not in self._until and identity not in self._past:
            return False
        with self._lock:
            past = self._past.get(identity)
            if past is not None and past <= now:
                del self._past[identity]
                past = None
            held = self._until.get(identity, {})
            found = asked = False
            for bucket in buckets:
                asked = True
                until = held.get(bucket)
                if until is not None and until <= now:
                    del held[bucket]
                elif until is not None:
                    found = True
            if not held:
                self._until.pop(identity, None)
        return found or (asked and past is not None)
