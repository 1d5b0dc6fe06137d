"""Refused requests: limited per caller, and coalesced in the audit log past the limit.

IN PCI SCOPE. Every refusal (401, 403, 404, 405, 413, 415, 422) gets an audit entry, as PCI DSS
10.2.1.4 wants for invalid access attempts, and none was charged to a rate limit: a refusal
rolls its transaction back, charge included. One stolen certificate, or anyone on the internet
through the capture listener, could write audit entries as fast as a node answers (review 26: 60
bad requests from an identity with a burst of 2, no 429, 63 entries). Each is a durable write;
the log only grows; and when the disk is full the vault stops for every caller, since nothing is
done that cannot be audited.

So each process keeps, per caller, a bucket that only its refusals spend (`REFUSALS`): the
answers a request got for what it was, before any work on what the vault holds. An unknown path,
a method, a body limit or type, a malformed or invalid body, a missing or refused certificate,
identity or second factor, a policy denial, and a caller over a limit of the vault's (rate,
quota, oracle guard: each such 429 was an entry too). Not a token that is not found, expired or
in conflict (409, 410, 404 on a known route: the vault answered about what it holds, and those
cost a rate unit already), nor an upstream's own status through the relay (review 28: charging
those held a service that missed a few tokens), nor a relay refused at once because its route
has `max_in_flight` relays under way (503 ``upstream_busy``): it costs a rate unit, as a relay
does (review 40: charged here, one put a caller in debt while its relays waited on the stalled
upstream, and each of them then counted against it, every route held back).

- The caller is an identity (its `rate_limit`; one not in the policy: `DEFAULT_REFUSALS`; a
  service the policy leaves unlimited is not limited here either), a certificate the vault took
  no identity from (by fingerprint, `DEFAULT_REFUSALS`), or on the capture listener a client
  address (IPv6 by its /64, which one host holds whole; the address limit).
- A person's identity (officers, auditors; `every_request`) spends a unit for every request it
  makes, answered or refused: their reads of the audit log, the key inventory and ceremonies are
  each an audit entry too, and the vault's rate limits meter only the token operations, so a
  stolen auditor's certificate could otherwise write entries as fast as a node answers (review
  28's F5). Without a `rate_limit` of its own a person gets `PERSON_REQUESTS`: far more than
  people and their scripts make, far less than a node answers.
- While a caller's bucket is empty, every request of it is answered 429 ``rate_limited`` by the
  guard before its body is read or any work is done, with the time the bucket needs for one unit
  in ``Retry-After``.
- The first such answer of an episode has its own audit entry; the next ones are only counted,
  and one ``api.requests_refused`` (``capture.requests_refused``) entry per caller and
  `SUMMARY_SECONDS` carries their number and the first and last time, when `RefusalFlusher`
  finds it due and when the vault stops. Their request ids are on the request log lines only.
- A process remembers at most `MAX_CALLERS` callers, least recently seen forgotten first; a
  forgotten caller's count goes to one shared count (actor or client ``*``).
- A count names its answers' origination (session 42, PCI DSS 10.2.2): its ``source`` when one,
  else an ``<action>_source`` entry per source (`NAMED_SOURCES`) before it. Before, a stolen
  certificate's refusals from another host were counted with the genuine service's, and no entry
  named the attacker's address.

So a caller writes at most its limit's worth of refusal entries per process, plus one entry per
`SUMMARY_SECONDS`. The buckets are per process, not shared through the database: they bound
growth rather than meter, and a shared bucket would cost every refusal one more durable write. A
node of N workers behind a balancer lets N times as much through.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import structlog

from cofre.background import describe_failure
from policies.models import RateLimit
from vault.service import AuditEvent, DetailValue, HexDigest, Outcome, Source, request_source

# Refusals of a caller the policy does not know: someone mistyping gets 20 answers in
# a row, a script one a second.
DEFAULT_REFUSALS: Final = RateLimit(per_second=1.0, burst=20)
# Every request of a person's identity (officer, auditor) without a rate limit of its
# own: 300 in a row, then 5 a second, per process.
PERSON_REQUESTS: Final = RateLimit(per_second=5.0, burst=300)
# The statuses a request's refusal spends a unit with (404 only for a path that does
# not exist: `charged`).
REFUSALS: Final = frozenset({400, 401, 403, 405, 413, 415, 422, 429})
# How often a caller's count of coalesced refusals is written, and how often
# `RefusalFlusher` looks.
SUMMARY_SECONDS: Final = 60.0
FLUSH_EVERY_SECONDS: Final = 5.0
SUMMARY_ACTION: Final = "api.requests_refused"
# The key of a certificate the vault could not take an identity from (a 401): this and
# its SHA-256 fingerprint (`unauthenticated_key`).
UNAUTHENTICATED: Final = "unauthenticated"
# The key of the count of callers forgotten for memory.
FORGOTTEN: Final = "*"
MAX_CALLERS: Final = 4096
# 404s about what a caller named, not what the vault holds for cards: a path, a key
# ceremony, an audit proof (review 30: an officer's guesses were free).
_NOTHING_THERE: Final = frozenset({"not_found", "ceremony_not_found", "proof_invalid"})
_NOTED: Final = 64
# The token records a count names, one small entry each (session 40: PCI DSS 10.2.2 wants
# the affected data named); the different ones past them are only numbered, and at most
# `_UNNAMED_HELD` of those are told apart (the rest make the number a lower bound).
NAMED_TOKENS: Final = 64
# The sources a count names (one entry each when several); others are numbered.
NAMED_SOURCES: Final = 16
_UNNAMED_HELD: Final = 4096
# The fixed details of a count of held 429s (`RefusalLimiter`'s `summary`).
_HELD_429S: Final[Mapping[str, DetailValue]] = {
    "status": 429,
    "code": "rate_limited",
    "limit": "refusals",
}
_log = structlog.get_logger("cofre.api")


def charged(status: int, code: str | None) -> bool:
    """Whether an answer of `status` with problem `code` spends a refusal unit (see the
    module text); an answer without a problem code is not the vault's refusal."""
    if not code:
        return False
    return status in REFUSALS or (status == 404 and code in _NOTHING_THERE)


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


@dataclass
class _Episode:
    """The coalesced refusals of one caller not yet written."""

    count: int = 0
    first: datetime | None = None
    last: datetime | None = None
    # Monotonic time of the episode's last entry (its first answer, or a count).
    written_at: float = 0.0
    # Who the counted answers went to, when one count covers several (`spent`'s `note`):
    # at most `_NOTED` of them, the rest under "others".
    noted: dict[str, int] = field(default_factory=dict)
    # The token records the counted refusals were about (`charge`'s `token`): at most
    # `NAMED_TOKENS` named with their notes, the other different ones only numbered.
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    unnamed: set[str] = field(default_factory=set)
    unnamed_past: bool = False  # more different ones than `_UNNAMED_HELD`
    # Where the counted answers came from (`request_source`; None: off a request), at
    # most `NAMED_SOURCES`, and how many came from others (session 42).
    sources: dict[Source | None, int] = field(default_factory=dict)
    sources_unnamed: int = 0

    def add(
        self,
        count: int,
        first: datetime | None,
        last: datetime | None,
        noted: dict[str, int] | None = None,
    ) -> None:
        self.count += count
        self.first = min(filter(None, (self.first, first)), default=None)
        self.last = max(filter(None, (self.last, last)), default=None)
        for caller, times in (noted or {}).items():
            who = "others" if caller not in self.noted and len(self.noted) >= _NOTED else caller
            self.noted[who] = self.noted.get(who, 0) + times

    def name(self, token: str, note: str | None, times: int = 1) -> None:
        """Note that `times` counted refusals (answered `note`) were about `token`."""
        if token in self.tokens or len(self.tokens) < NAMED_TOKENS:
            notes = self.tokens.setdefault(token, {})
            notes[note or "refused"] = notes.get(note or "refused", 0) + times
        elif len(self.unnamed) < _UNNAMED_HELD:
            self.unnamed.add(token)
        else:
            self.unnamed_past = self.unnamed_past or token not in self.unnamed

    def came_from(self, source: Source | None, times: int = 1) -> None:
        """Note that `times` counted answers came from `source`."""
        if source in self.sources or len(self.sources) < NAMED_SOURCES:
            self.sources[source] = self.sources.get(source, 0) + times
        else:
            self.sources_unnamed += times

    def merge(self, other: _Episode) -> None:
        """Add `other`'s counts, notes, sources and token records to this episode's."""
        self.add(other.count, other.first, other.last, other.noted)
        for source, times in other.sources.items():
            self.came_from(source, times)
        self.sources_unnamed += other.sources_unnamed
        for token, notes in other.tokens.items():
            for note, times in notes.items():
                self.name(token, note, times)
        for token in other.unnamed:
            self.name(token, None)
        self.unnamed_past = self.unnamed_past or other.unnamed_past

    def shown(self) -> str | None:
        """The noted callers, most counted first (ten of them), for the entry."""
        if not self.noted:
            return None
        ranked = sorted(self.noted.items(), key=lambda item: (-item[1], item[0]))
        return _shown(dict(ranked[:10]))


@dataclass
class _Bucket:
    tat: float  # GCRA's theoretical arrival time (monotonic seconds)
    interval: float
    tolerance: float
    episode: _Episode | None = field(default=None)

    def excess(self, now: float, units: int = 1) -> float:
        """How far past its tolerance `units` more take it (<= 0: they fit), from ``tat -
        now`` (session 43: ``max(tat, now) + interval - now`` was an ulp over an idle burst
        of 1), less an ulp of the clock's scale per unit held (each was added and rounded)."""
        lead = max(self.tat - now, 0.0) + units * self.interval
        held = self.tolerance / self.interval + 4
        return lead - self.tolerance - held * math.ulp(abs(now) + self.tolerance)


@dataclass(frozen=True)
class Spent:
    """The caller's refusals are over its limit: answer 429 with `retry_after`.
    `audit`: this answer opens an episode and gets its own entry."""

    retry_after: float
    audit: bool


class RefusalLimiter:
    """The per-caller refusal buckets of one process (see the module text).

    `limit_for(key)` is the caller's limit, None for a caller not limited;
    `every_request(key)` whether every request of the caller spends a unit, not only
    its refusals (a person's identity); `recorder` writes one audit entry durably. The
    guard calls `enter` when a request arrives, and when it is answered `leave`, then
    `charge` if it was refused (`charged`) or its caller is a person; `RefusalFlusher`
    calls `flush`. A count is
    written as an `action` entry with the details `summary`, whose actor and added
    details `describe(key)` gives; what `note`s a count holds is its `noted_as`."""

    def __init__(
        self,
        limit_for: Callable[[str], RateLimit | None],
        recorder: Callable[[AuditEvent], None],
        *,
        every_request: Callable[[str], bool] | None = None,
        action: str = SUMMARY_ACTION,
        token_action: str | None = None,
        describe: Callable[[str], tuple[str, dict[str, DetailValue]]] = describe_caller,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_callers: int = MAX_CALLERS,
        summary: Mapping[str, DetailValue] = _HELD_429S,
        noted_as: str = "callers",
    ) -> None:
        self._limit_for = limit_for
        self._fixed, self._noted_as = dict(summary), noted_as
        self._every_request = every_request
        self._recorder = recorder
        self._action = action
        # The action of the entry naming one token record a count covers (session 40).
        self._token_action = token_action or f"{action}_token"
        self._describe = describe
        self._clock = clock
        self._wall = wall
        self._max_callers = max_callers
        self._lock = threading.Lock()
        # Least recently charged or held first (`_remember`).
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        # The counts of callers forgotten while they had one.
        self._forgotten = _Episode()
        # Requests of each caller let in by `enter` and not answered yet. Touched only
        # by the event loop of the listener the limiter serves, like the hot path of
        # `spent`; none are kept for a caller with none in flight.
        self._in_flight: dict[str, int] = {}

    def spent(self, key: str, note: str | None = None) -> Spent | None:
        """None if `key` may be served; else the 429 to answer (counted here unless it
        opens an episode, and noted as `note`'s when one key stands for many)."""
        bucket = self._buckets.get(key)
        if bucket is None:  # the hot path: a caller that was never refused
            return None
        now = self._clock()
        with self._lock:
            if (over := bucket.excess(now)) <= 0:
                return None
            return self._held(key, bucket, over, now, note)

    def enter(self, key: str) -> Spent | None:
        """`spent` for a request that arrives, which is then in flight until `leave`.
        While the caller is in debt (refused within its limit's last units), each of
        its requests in flight counts as a unit it may yet spend: review 35 sent 60
        heads, then their malformed bodies, and all 60 passed a bucket of 2, since a
        unit was spent only at each answer. A caller that is not in debt is not held
        for its concurrency (review 36: a service at 80% of its rate behind a slow
        upstream got 429s it had never earned); the first wave of a caller's refusals
        is bounded at the answer instead (`charge`'s `hold`)."""
        held = self._in_flight.get(key, 0)
        bucket = self._buckets.get(key)
        if bucket is None:  # the hot path: never refused (or forgotten)
            self._in_flight[key] = held + 1
            return None
        now = self._clock()
        with self._lock:
            waiting = held if bucket.tat > now else 0
            if (over := bucket.excess(now, waiting + 1)) <= 0:
                self._in_flight[key] = held + 1
                return None
            return self._held(key, bucket, over, now, None)

    def admit(self, key: str) -> tuple[Spent | None, Admission]:
        """`enter`, with the unit the request then holds as an `Admission` to release."""
        spent = self.enter(key)
        return spent, NOTHING_HELD if spent is not None else Admission(self, key)

    def leave(self, key: str) -> None:
        """A request `enter` let in was answered (or ended): its unit is free again, to
        be spent by `charge` if the answer was a refusal."""
        held = self._in_flight.get(key, 0)
        if held > 1:
            self._in_flight[key] = held - 1
        else:
            self._in_flight.pop(key, None)

    def _held(
        self,
        key: str,
        bucket: _Bucket,
        retry_after: float,
        now: float,
        note: str | None,
        *,
        token: str | None = None,
    ) -> Spent:
        """The 429 of a caller held back (the lock is held): the first of an episode is
        written, the rest counted (about the token record `token`, if one)."""
        self._buckets.move_to_end(key)
        if bucket.episode is None:
            bucket.episode = _Episode(written_at=now)
            return Spent(retry_after, audit=True)
        stamp = self._wall()
        bucket.episode.add(1, stamp, stamp, None if note is None else {note: 1})
        bucket.episode.came_from(request_source())
        if token is not None:
            bucket.episode.name(token, note)
        return Spent(retry_after, audit=False)

    def limits(self, key: str) -> bool:
        """Whether `key` has a limit here (a service the policy leaves unlimited has
        none)."""
        return self._limit_for(key) is not None

    def spends_every_request(self, key: str) -> bool:
        """Whether every request of `key` spends a unit, not only its refusals."""
        return self._every_request is not None and self._every_request(key)

    def is_spent(self, key: str) -> bool:
        """Whether `key`'s bucket is empty now (counts nothing)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return False
        now = self._clock()
        with self._lock:
            return max(bucket.tat, now) + bucket.interval - now > bucket.tolerance

    def count(self, key: str, note: str | None = None, token: str | None = None) -> None:
        """Count one held answer of `key` that was to have its own entry but could not
        be written (it is then in the next count, noted as `note`'s, about `token`)."""
        stamp = self._wall()
        noted = None if note is None else {note: 1}
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                episode = self._forgotten
            else:
                if bucket.episode is None:
                    bucket.episode = _Episode(written_at=self._clock())
                episode = bucket.episode
            episode.add(1, stamp, stamp, noted)
            episode.came_from(request_source())
            if token is not None:
                episode.name(token, note)

    def charge(
        self, key: str, *, hold: bool = False, note: str | None = None, token: str | None = None
    ) -> Spent | None:
        """`key` was answered a refusal (or is a person, `every_request`): spend one unit
        (its next request may find the bucket empty; a charge never refuses what it is
        charged for). With `hold`, for a refusal whose entry the caller's guard is
        about to write: if the unit was not there, the entry is held as a 429's would
        be (the `Spent` returned: its own entry opens an episode, the rest counted),
        so requests let in together cannot write more than the limit allows; a count
        notes it as `note`'s, and names the token record `token` it was about."""
        limit = self._limit_for(key)
        if limit is None:
            return None
        interval = 1.0 / limit.per_second
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(now, interval, interval * limit.burst)
                self._forget_beyond(self._max_callers)
            else:
                self._buckets.move_to_end(key)
            # A policy reload takes effect at the next charge.
            bucket.interval, bucket.tolerance = interval, interval * limit.burst
            over = bucket.excess(now)
            bucket.tat = max(bucket.tat, now) + interval
            if hold and over > 0:
                return self._held(key, bucket, over, now, note, token=token)
            return None

    def flush(self, *, everything: bool = False) -> None:
        """Write the counts that are due (`everything`: all, when the vault stops), one
        entry per caller. Raises what `recorder` raises; the counts it did not write
        are kept for the next flush."""
        taken = self._take(everything=everything)
        for at, (key, episode) in enumerate(taken):
            try:
                # The records named first, the count last: a count not written is
                # given back whole, its names written again with it.
                for event in self._summaries(key, episode):
                    self._recorder(event)
            except BaseException:
                self._give_back(taken[at:])
                raise

    def _take(self, *, everything: bool) -> list[tuple[str, _Episode]]:
        now = self._clock()
        taken: list[tuple[str, _Episode]] = []
        with self._lock:
            if self._forgotten.count:
                taken.append((FORGOTTEN, self._forgotten))
                self._forgotten = _Episode()
            for key, bucket in self._buckets.items():
                episode = bucket.episode
                if episode is None or (
                    not everything and now - episode.written_at < SUMMARY_SECONDS
                ):
                    continue
                if episode.count:
                    taken.append((key, episode))
                    bucket.episode = _Episode(written_at=now)
                else:
                    # A whole interval without a held request: the episode is over, and
                    # the next one's first answer gets its own entry again.
                    bucket.episode = None
        return taken

    def _give_back(self, episodes: Iterable[tuple[str, _Episode]]) -> None:
        """Put back counts that could not be written, due again at the next flush."""
        with self._lock:
            for key, episode in episodes:
                bucket = self._buckets.get(key)
                if bucket is None:
                    held = self._forgotten
                else:
                    held = bucket.episode = bucket.episode or _Episode()
                    held.written_at = -math.inf
                held.merge(episode)

    def _forget_beyond(self, limit: int) -> None:
        """Forget the least recently seen callers past `limit` (under the lock); their
        counts go to the shared count of forgotten callers."""
        while len(self._buckets) > limit:
            _, bucket = self._buckets.popitem(last=False)
            if bucket.episode is not None and bucket.episode.count:
                self._forgotten.merge(bucket.episode)

    def _summaries(self, key: str, episode: _Episode) -> list[AuditEvent]:
        """The entries of `key`'s count: one per token record it names, then the count."""
        actor, described = self._describe(key)
        named = [
            AuditEvent(
                action=self._token_action,
                outcome=Outcome.DENIED,
                actor=actor,
                token_id=token,
                details={
                    **self._fixed,
                    "count": sum(notes.values()),
                    self._noted_as: _shown(notes),
                    **described,
                },
                source=None,
            )
            for token, notes in episode.tokens.items()
        ]
        sources = [source for source in episode.sources if source is not None]
        if len(sources) == 1 and len(episode.sources) == 1 and not episode.sources_unnamed:
            return [*named, self._summary(actor, described, episode, source=sources[0])]
        # From several sources: one entry each, with its number, before the count.
        origins = [
            AuditEvent(
                action=f"{self._action}_source",
                outcome=Outcome.DENIED,
                actor=actor,
                details={**self._fixed, "count": episode.sources[source], **described},
                source=source,
            )
            for source in sources
        ]
        return [*named, *origins, self._summary(actor, described, episode, source=None)]

    def _summary(
        self,
        actor: str,
        described: dict[str, DetailValue],
        episode: _Episode,
        *,
        source: Source | None,
    ) -> AuditEvent:
        first, last = episode.first, episode.last
        details: dict[str, DetailValue] = {
            **self._fixed,
            "count": episode.count,
            "first": first.isoformat() if first else None,
            "last": last.isoformat() if last else None,
            **described,
        }
        if (shown := episode.shown()) is not None:
            details[self._noted_as] = shown
        if episode.tokens:  # only then, so that every other count keeps its bytes
            details["tokens_named"] = len(episode.tokens)
            details["tokens_unnamed"] = len(episode.unnamed)
            if episode.unnamed_past:
                details["tokens_unnamed_at_least"] = True
        if source is None and (episode.sources_unnamed or len(episode.sources) > 1):
            details["sources"] = sum(1 for known in episode.sources if known is not None)
            details["sources_unnamed"] = episode.sources_unnamed
        return AuditEvent(
            action=self._action,
            outcome=Outcome.DENIED,
            actor=actor,
            details=details,
            source=source,
        )


def _shown(notes: Mapping[str, int]) -> str:
    """A token record's notes, most counted first: ``"policy_denied x3, ..."``."""
    ranked = sorted(notes.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{note} x{times}" for note, times in ranked)


class Admission:
    """The unit a request let in holds while in flight (`RefusalLimiter.admit`):
    `release` gives it back, once, when the request is answered or ends."""

    __slots__ = ("_key", "_limiter")

    def __init__(self, limiter: RefusalLimiter | None, key: str) -> None:
        self._limiter, self._key = limiter, key

    def release(self) -> None:
        if self._limiter is not None:
            self._limiter.leave(self._key)
            self._limiter = None


# What a request refused on arrival, or not limited at all, holds.
NOTHING_HELD: Final = Admission(None, "")


class RefusalFlusher:
    """Writes the due counts of `limiters` every `FLUSH_EVERY_SECONDS` (review 28: a
    count waited for the worker's next request, hours on an idle one), in a thread of
    its own, and every count when stopped. A failure is logged; the counts stay."""

    def __init__(
        self, limiters: Iterable[RefusalLimiter], interval: float = FLUSH_EVERY_SECONDS
    ) -> None:
        self._limiters = list(limiters)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cofre-refusals", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then write every count (before the audit log closes)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._flush(everything=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._flush(everything=False)

    def _flush(self, *, everything: bool) -> None:
        for limiter in self._limiters:
            try:
                limiter.flush(everything=everything)
            except Exception as exc:  # noqa: BLE001 - the counts stay; the thread goes on
                _log.error("refusal counts not written", error=describe_failure(exc))
