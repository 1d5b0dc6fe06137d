"""Refused requests: limited per identity, and coalesced in the audit log past the limit.

IN PCI SCOPE. Every refusal (401, 403, 404, 405, 413, 415, 422, 429) gets an audit
entry, as PCI DSS 10.2.1.4 wants for invalid access attempts, and none was charged to
the identity's rate limit: a refusal rolls its transaction back, charge included. One
stolen certificate could write audit entries as fast as a node answers it (review 26:
60 bad requests from an identity with a burst of 2, no 429, 63 entries). Each is a
durable write; the log only grows; and when the disk is full the vault stops for every
caller, since nothing is done that cannot be audited.

So each process keeps, per identity, a second bucket that only refusals spend. It
holds the identity's own `rate_limit` (an identity without one, or not in the policy:
`DEFAULT_REFUSALS`):

- an answer in 400-499 from anything but this bucket spends one unit;
- while the bucket is empty, every request of the identity is answered 429
  ``rate_limited`` by the request guard, before its body is read or any work is done,
  with the time the bucket needs for one unit in ``Retry-After``;
- the first such answer of an episode has its own audit entry; the next ones are only
  counted, and one ``api.requests_refused`` entry per identity and `SUMMARY_SECONDS`
  carries their number and the first and last time. The request ids of those are on
  the request log lines only (`api.guard`). Counts not yet written are written when a
  request (health probes included) finds them due, and when the vault stops.

So an identity writes at most its rate limit's worth of refusal entries per process,
plus one entry per `SUMMARY_SECONDS`, whatever it sends. The bucket is per process,
not shared through the database: it bounds growth rather than metering, and a shared
bucket would cost every refusal one more durable write. A node of N workers behind
a balancer lets N times as much through.

Only answers to a caller are counted: 5xx are the vault's failures, not the caller's.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from policies.models import RateLimit
from vault.service import AuditEvent, DetailValue, HexDigest, Outcome

# Refusals of an identity without a rate limit (officers, auditors, anyone not in the
# policy): a person mistyping gets 20 answers in a row, a script one a second.
DEFAULT_REFUSALS: Final = RateLimit(per_second=1.0, burst=20)
# How often the count of an identity's coalesced refusals is written.
SUMMARY_SECONDS: Final = 60.0
SUMMARY_ACTION: Final = "api.requests_refused"
# The key of a certificate the vault could not take an identity from (a 401): this and
# its SHA-256 fingerprint (`unauthenticated_key`).
UNAUTHENTICATED: Final = "unauthenticated"
# Identities remembered per process before the idle ones are forgotten.
_MAX_KEYS: Final = 4096


@dataclass
class _Episode:
    """The coalesced refusals of one identity not yet written."""

    count: int = 0
    first: datetime | None = None
    last: datetime | None = None
    # Monotonic time of the episode's last entry (its first answer, or a summary).
    written_at: float = 0.0


@dataclass
class _Bucket:
    tat: float  # GCRA's theoretical arrival time (monotonic seconds)
    interval: float
    tolerance: float
    episode: _Episode | None = field(default=None)


@dataclass(frozen=True)
class Spent:
    """The identity's refusals are over its limit: answer 429 with `retry_after`.
    `audit`: this answer opens an episode and gets its own entry."""

    retry_after: float
    audit: bool


class RefusalLimiter:
    """The per-identity refusal buckets of one process (see the module text).

    `limit_for(key)` is the identity's `rate_limit` or None; `recorder` writes one audit
    entry durably. The guard calls `spent` when a request arrives, `charge` when it is
    answered with a refusal, and `due` / `flush` to write the counts. A count is written
    as an `action` entry whose actor and added details `describe(key)` gives (the
    capture listener counts per client address, as ``capture.requests_refused``)."""

    def __init__(
        self,
        limit_for: Callable[[str], RateLimit | None],
        recorder: Callable[[AuditEvent], None],
        *,
        action: str = SUMMARY_ACTION,
        describe: Callable[[str], tuple[str, dict[str, DetailValue]]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._limit_for = limit_for
        self._recorder = recorder
        self._action = action
        self._describe = describe or describe_caller
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        # Monotonic time at which some episode's count is next due (inf: none).
        self._next_due = math.inf

    def spent(self, key: str) -> Spent | None:
        """None if `key` may be served; else the 429 to answer (counted here)."""
        bucket = self._buckets.get(key)
        if bucket is None:  # the hot path: a caller that was never refused
            return None
        now = self._clock()
        with self._lock:
            lead = max(bucket.tat, now) + bucket.interval - now
            if lead <= bucket.tolerance:
                return None
            episode = bucket.episode
            if episode is None:
                bucket.episode = _Episode(written_at=now)
                self._next_due = min(self._next_due, now + SUMMARY_SECONDS)
                return Spent(lead - bucket.tolerance, audit=True)
            stamp = self._wall()
            episode.count += 1
            episode.first = episode.first or stamp
            episode.last = stamp
            return Spent(lead - bucket.tolerance, audit=False)

    def charge(self, key: str) -> None:
        """`key` was answered a refusal: spend one unit (its next request may find the
        bucket empty; a charge never refuses what it is charged for)."""
        limit = self._limit_for(key) or DEFAULT_REFUSALS
        interval = 1.0 / limit.per_second
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= _MAX_KEYS:
                    self._forget_idle(now)
                bucket = self._buckets[key] = _Bucket(now, interval, interval * limit.burst)
            # A policy reload takes effect at the next charge.
            bucket.interval, bucket.tolerance = interval, interval * limit.burst
            bucket.tat = max(bucket.tat, now) + interval

    def due(self) -> bool:
        """Whether some count is due to be written (cheap: read on every request)."""
        return self._clock() >= self._next_due

    def flush(self, *, everything: bool = False) -> None:
        """Write the counts that are due (`everything`: all, when the vault stops), one
        entry per identity. Raises what `recorder` raises; a count it failed to write
        is kept for the next flush."""
        for key, episode in self._take(everything=everything):
            try:
                self._recorder(self._summary(key, episode))
            except BaseException:
                self._give_back(key, episode)
                raise

    def _take(self, *, everything: bool) -> list[tuple[str, _Episode]]:
        now = self._clock()
        taken: list[tuple[str, _Episode]] = []
        with self._lock:
            self._next_due = math.inf
            for key, bucket in self._buckets.items():
                episode = bucket.episode
                if episode is None:
                    continue
                if not everything and now - episode.written_at < SUMMARY_SECONDS:
                    self._next_due = min(self._next_due, episode.written_at + SUMMARY_SECONDS)
                    continue
                if episode.count:
                    taken.append((key, _Episode(episode.count, episode.first, episode.last)))
                    bucket.episode = _Episode(written_at=now)
                    self._next_due = min(self._next_due, now + SUMMARY_SECONDS)
                else:
                    # A whole interval without a refused request: the episode is over,
                    # and the next one's first answer gets its own entry again.
                    bucket.episode = None
        return taken

    def _give_back(self, key: str, episode: _Episode) -> None:
        """Put back a count that could not be written, due again at once."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:  # pragma: no cover - only idle buckets are forgotten
                return
            held = bucket.episode = bucket.episode or _Episode()
            held.count += episode.count
            held.first = min(filter(None, (held.first, episode.first)), default=None)
            held.last = max(filter(None, (held.last, episode.last)), default=None)
            held.written_at = now - SUMMARY_SECONDS
            self._next_due = now

    def _summary(self, key: str, episode: _Episode) -> AuditEvent:
        first, last = episode.first, episode.last
        actor, described = self._describe(key)
        details: dict[str, DetailValue] = {
            "status": 429,
            "code": "rate_limited",
            "limit": "refusals",
            "count": episode.count,
            "first": first.isoformat() if first else None,
            "last": last.isoformat() if last else None,
            **described,
        }
        return AuditEvent(action=self._action, outcome=Outcome.DENIED, actor=actor, details=details)

    def _forget_idle(self, now: float) -> None:
        """Drop the buckets that are full again and hold no count (under the lock)."""
        for key in [
            key
            for key, bucket in self._buckets.items()
            if bucket.tat <= now and bucket.episode is None
        ]:
            del self._buckets[key]


def unauthenticated_key(cert_sha256: str) -> str:
    """The key of a certificate without an identity, by its SHA-256 fingerprint."""
    return f"{UNAUTHENTICATED} {cert_sha256}"


def describe_caller(key: str) -> tuple[str, dict[str, DetailValue]]:
    """The actor of an API caller's key, and its certificate's fingerprint for one
    without an identity (`unauthenticated_key`)."""
    actor, _, sha256 = key.partition(" ")
    if actor == UNAUTHENTICATED:
        return actor, {"cert_sha256": HexDigest(sha256)}
    return key, {}
