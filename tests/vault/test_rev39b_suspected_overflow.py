"""Review 39b of the oracle guard's memory of refused buckets (`vault._suspected_buckets`).

A stolen certificate that fills one bucket first and then 4,096 more (about 41,000
cards in a window, at its rate) keeps the first one clearing first: each time a call of
it is refused in the commit group and the bucket learnt again, the memory is one past
`SUSPECTED_ENTRIES` and lets go the bucket clearing first, the one it has just learnt.
So every call of that bucket is refused in the group again, rerunning every other
caller's operation in it, at the certificate's rate; docs/threat-model.md says "one
rerun per full bucket, worker and window" and "forgets the one clearing first (checked
in the group again)" without saying it is each call. Any rule that lets one bucket go
leaves a bucket the certificate can call next; the lead decides whether an identity
past the memory is checked before the group on every guarded call (as the token-guess
memory refuses such an identity every read), which changes
`test_rev38_suspected_buckets.test_the_buckets_clearing_first_are_let_go`.

Session 40 took that design: past the memory, the identity is checked before the group
on every guarded call until the buckets let go clear
(`tests/vault/test_guard40_suspected_overflow.py` runs the attack end to end).
"""

from __future__ import annotations

import os

from vault._suspected_buckets import SUSPECTED_ENTRIES, SuspectedBuckets


def test_a_bucket_learnt_past_the_memory_is_remembered() -> None:
    memory = SuspectedBuckets()
    first = os.urandom(16)
    memory.learn("spiffe://cofre/payments", [first], 50.0)  # filled first, clears first
    memory.learn(
        "spiffe://cofre/payments", [os.urandom(16) for _ in range(SUSPECTED_ENTRIES)], 200.0
    )
    for _ in range(3):  # each call of it refused in the group, then learnt again
        memory.learn("spiffe://cofre/payments", [first], 50.0)
        assert memory.suspected("spiffe://cofre/payments", [first], 1.0)
