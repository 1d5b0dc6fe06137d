"""The refusal entries of a service the policy leaves without a rate limit: written up
to an allowance, then counted.

IN PCI SCOPE. The refusal bucket (`api.refusals`) is an identity's own `rate_limit`,
and a service without one is not limited there: its policy says it may send as much as
it likes, and holding all its requests back because some were refused would take a
shop's checkout down for a client bug. But each refusal was a durable audit entry (a
row, a sequencer's work, a transaction), so one stolen certificate of such a service (a
shop's backend granted `capture`, outside PCI scope) grew the log at its own pace with
requests refused for what they were: capture sessions past its bound (429), operations
not granted (403), malformed bodies (400/422), unknown paths (404). Session 39.

Now each such caller has an allowance of refusal entries per process,
`UNMETERED_REFUSALS`. Past it its requests are still served and its refusals still
answered with their own codes; but their entries, the vault's own (asked through
`vault.service.refusal_sieve`) and the request guard's, are held as a refused caller's
429s are: the first of an episode written, the rest counted, one `COUNTED_ACTION` entry
per caller and `api.refusals.SUMMARY_SECONDS` naming how many of each code
(``"codes": "rate_limited x400, policy_denied x250, ..."``), the first and the last
time (`api.refusals.RefusalFlusher`). Only the refusals the refusal bucket charges
(`api.refusals.charged`) are counted: an answer about what the vault holds, an
upstream's failure through the relay, an error of the vault's own keep their entries.

Fail closed: a refusal grants nothing, so it is answered whether its entry was written
or counted; a count that cannot be written is kept and tried again at every flush and
when the vault stops (its refusals are also each on the request log line). Every other
entry of such a caller (a success in its transaction) is written as before, and a
failure to write it refuses the operation as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from api.problems import PROBLEMS
from api.refusals import RefusalLimiter, Spent, charged
from policies.models import RateLimit
from vault.service import AuditEvent, Outcome

# Refusal entries written one by one for a service without a rate limit, per process:
# 100 in a row, then one a second; the rest are counted.
UNMETERED_REFUSALS: Final = RateLimit(per_second=1.0, burst=100)
COUNTED_ACTION: Final = "api.refusals_counted"
# A request whose refusal is not decided yet (`RequestSieve.hold`).
_UNDECIDED: Final = Spent(0.0, audit=True)


def unmetered_limiter(
    metered: RefusalLimiter,
    recorder: Callable[[AuditEvent], None],
    *,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RefusalLimiter:
    """The allowance of refusal entries of every caller `metered` (the refusal bucket)
    leaves unlimited; its counts are written by `recorder` (`clock` and `wall` as
    `RefusalLimiter`'s)."""
    return RefusalLimiter(
        lambda key: None if metered.limits(key) else UNMETERED_REFUSALS,
        recorder,
        action=COUNTED_ACTION,
        summary={"limit": "refusal_entries"},
        noted_as="codes",
        clock=clock,
        wall=wall,
    )


def refusal_code(event: AuditEvent) -> str | None:
    """The problem code of the refusal a vault entry records, if the refusal bucket
    charges it (`api.refusals.charged`), else None. The vault names a refusal's code in
    ``error``; a policy denial is an entry ``denied`` with a ``reason``."""
    code = event.details.get("error")
    if code is None and event.outcome is Outcome.DENIED and "reason" in event.details:
        code = "policy_denied"
    if not isinstance(code, str) or code not in PROBLEMS:
        return None
    return code if charged(PROBLEMS[code][0], code) else None


class RequestSieve:
    """One request's sieve of its refusal entries (see the module text). `limiter` is
    `unmetered_limiter`'s; `key` tells, once the request is authenticated, whose
    refusals they are (None without a certificate)."""

    __slots__ = ("_held", "_key", "_limiter", "counted")

    def __init__(self, limiter: RefusalLimiter, key: Callable[[], str | None]) -> None:
        self._limiter, self._key = limiter, key
        self._held: Spent | None = _UNDECIDED
        self.counted = False  # the request's refusal is in a count, not an entry

    def __call__(self, event: AuditEvent) -> bool:
        """Whether the vault writes `event`'s entry (`vault.service.refusal_sieve`)."""
        code = refusal_code(event)
        held = None if code is None else self.hold(code)
        return held is None or held.audit

    def hold(self, code: str) -> Spent | None:
        """Spend a unit of the caller's allowance for a refusal answered `code` whose
        entry is about to be written: None (or a `Spent` with `audit`) to write it,
        else it was counted. Once per request: a request is one refusal, and a call
        begun on the event loop that would wait for the database runs again from its
        start in a thread (`api.routes._offload.answered_on_loop`), asking again."""
        if self._held is not _UNDECIDED:
            return self._held
        key = self._key()
        held = None
        if key is not None and self._limiter.limits(key):
            held = self._limiter.charge(key, hold=True, note=code)
        self._held = held
        self.counted = held is not None and not held.audit
        return held

    def count(self, code: str | None) -> bool:
        """Count a refusal whose entry `hold` let through but could not be written;
        whether the caller is one this sieve counts (else its bucket does)."""
        key = self._key()
        if key is None or not self._limiter.limits(key):
            return False
        self._limiter.count(key, note=code)
        self._held, self.counted = Spent(0.0, audit=False), True
        return True
