"""Review rev38 of fin37's memory of oracle-guard refusals (`vault._suspected_buckets`).

A refusal in the commit group remembers every bucket of the call (a tokenize batch's
thousand), and an identity's memory past `SUSPECTED_ENTRIES` let go the bucket clearing
first one at a time, each found by a scan of the whole memory: a refused batch of 1,000
new buckets into a full memory made a thousand scans of 4,096 entries, about half a
second of one worker's interpreter lock (held by the C loop of `min`) and of the lock
every suspected identity's next call waits on, for each batch one certificate had
refused in its group (its units as before, but many times the CPU of a batch served).
Counted here by the comparisons of the times remembered, so the test does not depend on
the machine's speed. Held: the buckets clearing first are the ones let go."""

from __future__ import annotations

import os

from vault._suspected_buckets import SUSPECTED_ENTRIES, SuspectedBuckets
from vault.models import MAX_BATCH

COMPARED: list[int] = [0]


class _Second(float):
    """A time that counts its comparisons (every way of finding the earliest compares)."""

    def __lt__(self, other: object) -> bool:
        COMPARED[0] += 1
        return float(self) < float(other)  # type: ignore[arg-type]

    def __gt__(self, other: object) -> bool:
        COMPARED[0] += 1
        return float(self) > float(other)  # type: ignore[arg-type]

    def __le__(self, other: object) -> bool:
        COMPARED[0] += 1
        return float(self) <= float(other)  # type: ignore[arg-type]

    def __ge__(self, other: object) -> bool:
        COMPARED[0] += 1
        return float(self) >= float(other)  # type: ignore[arg-type]


def _buckets(count: int) -> list[bytes]:
    return [os.urandom(16) for _ in range(count)]


def test_a_refused_batch_into_a_full_memory_costs_work_linear_in_it() -> None:
    memory = SuspectedBuckets()
    for step in range(SUSPECTED_ENTRIES // MAX_BATCH + 1):
        memory.learn("spiffe://cofre/sweeper", _buckets(MAX_BATCH), _Second(1000 + step))
    COMPARED[0] = 0
    memory.learn("spiffe://cofre/sweeper", _buckets(MAX_BATCH), _Second(5000))
    # A scan per bucket let go compares about 4 million times; a sort of the memory
    # about (4,096 + 1,000) x 13.
    assert COMPARED[0] <= 40 * (SUSPECTED_ENTRIES + MAX_BATCH), COMPARED[0]


def test_the_buckets_clearing_first_are_let_go() -> None:
    """Changed by review 39b: the buckets let go past the memory are the ones clearing
    first, as before, but until they clear every bucket of the identity is checked
    before the group (`test_rev39b_suspected_overflow.py`); once they clear, only the
    buckets kept are."""
    memory = SuspectedBuckets()
    early, late = _buckets(SUSPECTED_ENTRIES), _buckets(10)
    memory.learn("a", early[:10], 50.0)
    memory.learn("a", early[10:], 200.0)
    memory.learn("a", late, 300.0)
    assert len(memory._until["a"]) == SUSPECTED_ENTRIES, "the memory is bounded"
    assert memory.suspected("a", early[:10], 1.0), "let go, but checked until they clear"
    assert memory.suspected("a", _buckets(1), 49.0), "past the memory: every bucket"
    assert not memory.suspected("a", early[:10], 51.0), "the earliest let go"
    assert memory.suspected("a", early[10:11], 51.0)
    assert memory.suspected("a", late[:1], 51.0)
    assert not memory.suspected("b", late, 1.0), "another identity's memory"
