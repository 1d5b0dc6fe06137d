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
`UNMETERED_REFUSALS` (and `NAMED_REFUSALS` for its refusals naming a token, session 40,
whether the vault holds it or not, session 41) by default, set by
``COFRE_AUDIT__REFUSAL_ENTRIES_*`` and ``COFRE_AUDIT__NAMED_REFUSAL_ENTRIES_*``
(`RefusalAllowances`, session 41). Past it its requests are still served and its
refusals still answered with their own codes; but their entries, the vault's own (asked
through `vault.service.refusal_sieve`) and the request guard's, are held as a refused
caller's 429s are: the first of an episode written, the rest counted, one
`COUNTED_ACTION` entry per caller and `api.refusals.SUMMARY_SECONDS` naming how many of
each code (``"codes": "rate_limited x400, policy_denied x250, ..."``), the first and the
last time (`api.refusals.RefusalFlusher`). A refusal about a token the vault holds names
its record (`vault.service.naming_token`, session 40: PCI DSS 10.2.2, the affected
data), and a count names up to `api.refusals.NAMED_TOKENS` of the records its refusals
were about, one `COUNTED_TOKEN_ACTION` entry each (its codes and number, never the token
digits), and numbers the other different ones (``tokens_unnamed``). Only the refusals
the refusal bucket charges (`api.refusals.charged`) are counted: an answer about what
the vault holds, an upstream's failure through the relay, an error of the vault's own
keep their entries.

Fail closed: a refusal grants nothing, so it is answered whether its entry was written
or counted; a count that cannot be written is kept and tried again at every flush and
when the vault stops (its refusals are also each on the request log line). Every other
entry of such a caller (a success in its transaction) is written as before, and a
failure to write it refuses the operation as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from api.problems import PROBLEMS
from api.refusals import RefusalLimiter, Spent, charged, describe_caller
from cofre.settings import AuditSettings
from policies.models import RateLimit
from vault.service import AuditEvent, DetailValue, Outcome, names_token

# Refusal entries written one by one for a service without a rate limit, per process:
# 100 in a row, then one a second; the rest are counted. This and `NAMED_REFUSALS` are
# the defaults of `cofre.settings.AuditSettings`, which sets them (session 41).
UNMETERED_REFUSALS: Final = RateLimit(per_second=1.0, burst=100)
# Refusals naming a token (a denial of a read, update or delete of one) have an
# allowance of their own, larger: each names the card record asked for when the vault
# holds it (PCI DSS 10.2.2, session 40). Spent whether it holds it or not (session 41):
# spent only for held ones, a denial's entry was written or counted by whether the vault
# held the token, which its timing told a caller it answered the same.
# 1,000 in a row, then one a second, per process.
NAMED_REFUSALS: Final = RateLimit(per_second=1.0, burst=1000)


@dataclass(frozen=True, slots=True)
class RefusalAllowances:
    """The allowances of refusal entries of a service without a rate limit, per process:
    `unmetered` for its refusals, `named` for those naming a token (held or not,
    session 41)."""

    unmetered: RateLimit = UNMETERED_REFUSALS
    named: RateLimit = NAMED_REFUSALS

    @classmethod
    def from_settings(cls, audit: AuditSettings) -> RefusalAllowances:
        """The allowances ``COFRE_AUDIT__REFUSAL_ENTRIES_*`` and
        ``COFRE_AUDIT__NAMED_REFUSAL_ENTRIES_*`` set (validated by `AuditSettings`)."""
        return cls(
            unmetered=RateLimit(
                per_second=audit.refusal_entries_per_second, burst=audit.refusal_entries_burst
            ),
            named=RateLimit(
                per_second=audit.named_refusal_entries_per_second,
                burst=audit.named_refusal_entries_burst,
            ),
        )


DEFAULT_ALLOWANCES: Final = RefusalAllowances()
# The key of a caller's refusals naming a token in the allowance's limiter.
_ABOUT_RECORDS: Final = " records"
COUNTED_ACTION: Final = "api.refusals_counted"
# One entry per token record a count names (session 40), before the count itself.
COUNTED_TOKEN_ACTION: Final = "api.refusals_counted_token"  # noqa: S105 - an action name
# A request whose refusal is not decided yet (`RequestSieve.hold`).
_UNDECIDED: Final = Spent(0.0, audit=True)


def unmetered_limiter(
    metered: RefusalLimiter,
    recorder: Callable[[AuditEvent], None],
    *,
    allowances: RefusalAllowances = DEFAULT_ALLOWANCES,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RefusalLimiter:
    """The allowance of refusal entries (`allowances`) of every caller `metered` (the
    refusal bucket) leaves unlimited; its counts are written by `recorder` (`clock` and
    `wall` as `RefusalLimiter`'s)."""

    def limit_for(key: str) -> RateLimit | None:
        caller, about_records = _caller(key)
        if metered.limits(caller):
            return None
        return allowances.named if about_records else allowances.unmetered

    return RefusalLimiter(
        limit_for,
        recorder,
        action=COUNTED_ACTION,
        token_action=COUNTED_TOKEN_ACTION,
        describe=_described,
        summary={"limit": "refusal_entries"},
        noted_as="codes",
        clock=clock,
        wall=wall,
    )


def _caller(key: str) -> tuple[str, bool]:
    """The caller of an allowance's `key`, and whether the key is its refusals naming
    a token (`RefusalAllowances.named`)."""
    if key.endswith(_ABOUT_RECORDS):
        return key.removesuffix(_ABOUT_RECORDS), True
    return key, False


def _described(key: str) -> tuple[str, dict[str, DetailValue]]:
    """The actor of a count of the allowance's `key`, and which allowance it passed."""
    caller, about_records = _caller(key)
    actor, described = describe_caller(caller)
    if about_records:
        described["limit"] = "named_refusal_entries"
    return actor, described


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
        # The allowance is chosen by what the request names, never by whether the vault
        # holds it (session 41): chosen by the record found, a denial of a held token
        # was still written past the other allowance while one of a token the vault
        # does not hold was counted, a durable write against none, one guess a request.
        about = event.token_id is not None or names_token()
        held = None if code is None else self.hold(code, event.token_id, about_records=about)
        return held is None or held.audit

    def hold(
        self, code: str, token: str | None = None, *, about_records: bool | None = None
    ) -> Spent | None:
        """Spend a unit of the caller's allowance for a refusal answered `code` whose
        entry (about the token record `token`, if one) is about to be written: None (or
        a `Spent` with `audit`) to write it, else it was counted, and its count names
        `token`. `about_records` (by default: `token` given): the refusal names a token,
        held or not, and spends `NAMED_REFUSALS`. Once per request: a request is one
        refusal, and a call begun on the event loop that would wait for the database
        runs again from its start in a thread (`api.routes._offload.answered_on_loop`),
        asking again."""
        if self._held is not _UNDECIDED:
            return self._held
        key = self._key()
        if about_records is None:
            about_records = token is not None
        if key is not None and about_records:  # its own allowance (`named`)
            key += _ABOUT_RECORDS
        held = None
        if key is not None and self._limiter.limits(key):
            held = self._limiter.charge(key, hold=True, note=code, token=token)
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
