"""`api.refusals.RefusalLimiter` on its own, with clocks the test moves: the bucket's
arithmetic, the episodes and their counts, a failed write, the memory bound. The
attack against a real vault is tests/api/test_refusal_attacks.py."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api import refusals as module
from api.refusals import (
    DEFAULT_REFUSALS,
    FORGOTTEN,
    SUMMARY_ACTION,
    SUMMARY_SECONDS,
    Admission,
    RefusalFlusher,
    RefusalLimiter,
    charged,
    unauthenticated_key,
)
from audit.errors import AuditWriteFailed
from policies.models import RateLimit
from vault.service import AuditEvent, Outcome

LIMIT = RateLimit(per_second=2.0, burst=3)  # a unit every 0.5 s


class _Clocks:
    def __init__(self) -> None:
        self.now = 1000.0
        self.epoch = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)

    def mono(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return self.epoch + timedelta(seconds=self.now - 1000.0)


def _limiter(
    written: list[AuditEvent], limits: dict[str, RateLimit] | None = None, max_callers: int = 64
) -> tuple[RefusalLimiter, _Clocks]:
    clocks = _Clocks()
    known = {"spiffe://cofre/a": LIMIT} if limits is None else limits
    limiter = RefusalLimiter(
        lambda key: known.get(key, DEFAULT_REFUSALS),
        written.append,
        clock=clocks.mono,
        wall=clocks.wall,
        max_callers=max_callers,
    )
    return limiter, clocks


def test_a_caller_never_refused_is_never_held() -> None:
    limiter, _ = _limiter([])
    assert limiter.spent("spiffe://cofre/a") is None


@pytest.mark.parametrize(
    ("status", "code", "spends"),
    [
        (422, "malformed_json", True),
        (403, "policy_denied", True),
        (401, "mfa_required", True),
        (405, "method_not_allowed", True),
        (413, "payload_too_large", True),
        (415, "unsupported_media_type", True),
        (429, "rate_limited", True),
        (429, "oracle_suspected", True),
        (404, "not_found", True),  # a path that does not exist
        (404, "ceremony_not_found", True),
        (404, "proof_invalid", True),
        # Review 28: answers about what the vault holds held a service that missed a
        # few tokens; an upstream's own 4xx through the relay has no problem code.
        (404, "token_not_found", False),
        (410, "token_expired", False),
        (409, "idempotency_conflict", False),
        (422, None, False),
        (400, "", False),
        (503, "storage_unavailable", False),
        (503, "upstream_busy", False),  # a relay route full: costs a rate unit instead
        (502, "upstream_unavailable", False),
    ],
)
def test_only_refusals_of_the_request_itself_spend_a_unit(
    status: int, code: str | None, spends: bool
) -> None:
    assert charged(status, code) is spends


def test_a_caller_the_policy_leaves_unlimited_is_never_held() -> None:
    limiter = RefusalLimiter(lambda _: None, [].append)
    for _ in range(1000):
        limiter.charge("spiffe://cofre/settlement")
    assert limiter.spent("spiffe://cofre/settlement") is None


def test_the_bucket_holds_the_burst_then_one_unit_per_interval() -> None:
    limiter, clocks = _limiter([])
    key = "spiffe://cofre/a"
    for _ in range(LIMIT.burst):
        assert limiter.spent(key) is None
        limiter.charge(key)
    spent = limiter.spent(key)
    assert spent is not None
    assert spent.retry_after == pytest.approx(0.5)
    clocks.now += 0.5
    assert limiter.spent(key) is None
    limiter.charge(key)
    assert limiter.spent(key) is not None


def test_the_default_limit_holds_after_its_burst() -> None:
    limiter, _ = _limiter([], limits={})
    key = "spiffe://cofre/officer"
    for _ in range(DEFAULT_REFUSALS.burst):
        assert limiter.spent(key) is None
        limiter.charge(key)
    assert limiter.spent(key) is not None


def test_an_episode_has_one_entry_then_a_count_per_interval() -> None:
    written: list[AuditEvent] = []
    limiter, clocks = _limiter(written)
    key = "spiffe://cofre/a"
    for _ in range(LIMIT.burst):
        limiter.charge(key)
    first = limiter.spent(key)
    assert first is not None
    assert first.audit
    for _ in range(5):
        spent = limiter.spent(key)
        assert spent is not None
        assert not spent.audit
    # Not due before the interval: nothing written.
    limiter.flush()
    assert written == []
    clocks.now += SUMMARY_SECONDS
    limiter.flush()
    (summary,) = written
    assert summary.action == SUMMARY_ACTION
    assert summary.outcome is Outcome.DENIED
    assert summary.actor == key
    assert summary.details["count"] == 5
    assert summary.details["first"] == summary.details["last"] == "2026-12-03T09:00:00+00:00"
    assert summary.details["code"] == "rate_limited"
    # The episode goes on: a caller still refused is counted, not written one by one.
    for _ in range(LIMIT.burst + 1):
        limiter.charge(key)
    spent = limiter.spent(key)
    assert spent is not None
    assert not spent.audit
    clocks.now += SUMMARY_SECONDS
    limiter.flush()
    assert [e.details["count"] for e in written] == [5, 1]
    # A whole interval without a refused request ends it; the next one is written again.
    clocks.now += SUMMARY_SECONDS
    limiter.flush()
    assert len(written) == 2
    for _ in range(LIMIT.burst + 1):
        limiter.charge(key)
    spent = limiter.spent(key)
    assert spent is not None
    assert spent.audit


def test_a_count_that_could_not_be_written_is_kept() -> None:
    failing = True
    written: list[AuditEvent] = []

    def recorder(event: AuditEvent) -> None:
        if failing:
            raise AuditWriteFailed("the audit log is down")
        written.append(event)

    clocks = _Clocks()
    limiter = RefusalLimiter(lambda _: LIMIT, recorder, clock=clocks.mono, wall=clocks.wall)
    key = "spiffe://cofre/a"
    for _ in range(LIMIT.burst):
        limiter.charge(key)
    limiter.spent(key)
    for _ in range(3):
        limiter.spent(key)
    clocks.now += SUMMARY_SECONDS
    with pytest.raises(AuditWriteFailed):
        limiter.flush()
    for _ in range(LIMIT.burst + 1):  # the bucket refilled meanwhile
        limiter.charge(key)
    assert limiter.spent(key) is not None
    failing = False
    limiter.flush()
    assert [e.details["count"] for e in written] == [4]


def test_stopping_writes_every_count() -> None:
    written: list[AuditEvent] = []
    limiter, _ = _limiter(written)
    key = "spiffe://cofre/a"
    for _ in range(LIMIT.burst):
        limiter.charge(key)
    limiter.spent(key)
    limiter.spent(key)
    limiter.flush(everything=True)
    assert [e.details["count"] for e in written] == [1]


def test_a_certificate_without_an_identity_is_named_by_its_fingerprint() -> None:
    written: list[AuditEvent] = []
    limiter, _ = _limiter(written, limits={})
    key = unauthenticated_key("ab" * 32)
    for _ in range(DEFAULT_REFUSALS.burst):
        limiter.charge(key)
    limiter.spent(key)
    limiter.spent(key)
    limiter.flush(everything=True)
    (summary,) = written
    assert summary.actor == "unauthenticated"
    assert summary.details["cert_sha256"] == "ab" * 32


def test_a_failed_write_keeps_every_callers_count() -> None:
    """Review 28: of the counts taken for one flush, only the failing one was kept."""
    written: list[AuditEvent] = []
    calls = 0

    def recorder(event: AuditEvent) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise AuditWriteFailed("the disk is full")
        written.append(event)

    clocks = _Clocks()
    limiter = RefusalLimiter(lambda _: LIMIT, recorder, clock=clocks.mono, wall=clocks.wall)
    for key in [f"spiffe://cofre/c{i}" for i in range(5)]:
        for _ in range(LIMIT.burst):
            limiter.charge(key)
        for _ in range(11):  # one opens the episode, ten are counted
            limiter.spent(key)
    clocks.now += SUMMARY_SECONDS
    with pytest.raises(AuditWriteFailed):
        limiter.flush()
    limiter.flush()
    assert sum(int(e.details["count"] or 0) for e in written) == 50


def test_the_least_recently_seen_callers_are_forgotten_their_counts_kept() -> None:
    """Review 28: callers still spending or holding a count were never forgotten, so
    a host with many addresses grew the map without limit."""
    written: list[AuditEvent] = []
    limiter, _ = _limiter(written, limits={}, max_callers=4)
    for i in range(4):
        key = f"k{i}"
        for _ in range(DEFAULT_REFUSALS.burst):
            limiter.charge(key)
        limiter.spent(key)  # opens the episode
        limiter.spent(key)  # counted
    for i in range(4, 40):
        limiter.charge(f"k{i}")
    assert len(limiter._buckets) == 4
    limiter.flush(everything=True)
    (forgotten,) = [e for e in written if e.actor == FORGOTTEN]
    assert forgotten.details["count"] == 4


def test_the_flusher_writes_a_due_count_without_any_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review 28: a count waited for the worker's next request (hours on an idle one)."""
    monkeypatch.setattr(module, "SUMMARY_SECONDS", 0.05)
    written: list[AuditEvent] = []
    limiter = RefusalLimiter(lambda _: LIMIT, written.append)
    for _ in range(LIMIT.burst):
        limiter.charge("spiffe://cofre/a")
    limiter.spent("spiffe://cofre/a")
    limiter.spent("spiffe://cofre/a")
    flusher = RefusalFlusher([limiter], interval=0.01)
    flusher.start()
    try:
        for _ in range(500):
            if written:
                break
            time.sleep(0.01)
        assert [e.details["count"] for e in written] == [1]
    finally:
        flusher.stop()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.just(("charge", 0.0)),
            st.just(("spent", 0.0)),
            st.just(("flush", 0.0)),
            st.floats(min_value=0.0, max_value=2 * SUMMARY_SECONDS).map(lambda s: ("wait", s)),
        ),
        max_size=200,
    )
)
def test_every_held_request_is_in_an_entry_or_a_count(steps: list[tuple[str, float]]) -> None:
    """Whatever the order: the 429s the limiter answers equal the entries the guard
    writes (`audit`) plus the counts it writes, once it has stopped."""
    written: list[AuditEvent] = []
    limiter, clocks = _limiter(written)
    key = "spiffe://cofre/a"
    held = audited = 0
    for step, seconds in steps:
        if step == "charge":
            limiter.charge(key)
        elif step == "spent":
            spent = limiter.spent(key)
            if spent is not None:
                held += 1
                audited += spent.audit
                assert spent.retry_after > 0
        elif step == "flush":
            limiter.flush()
        else:
            clocks.now += seconds
    limiter.flush(everything=True)
    assert audited + sum(int(e.details["count"] or 0) for e in written) == held
    assert all(int(e.details["count"] or 0) > 0 for e in written)


def test_a_caller_not_in_debt_is_not_held_for_its_concurrency() -> None:
    """Review 36: holding a unit per request in flight capped every caller's concurrency
    at its burst, and a service behind a slow upstream got 429s it never earned."""
    limiter, clocks = _limiter([])
    key = "spiffe://cofre/a"  # burst 3
    assert all(limiter.enter(key) is None for _ in range(100))  # never refused
    for _ in range(100):
        limiter.leave(key)
    limiter.charge(key)  # refused once, long ago
    clocks.now += 60
    assert all(limiter.enter(key) is None for _ in range(100))


def test_in_debt_each_request_in_flight_counts() -> None:
    """Review 35: while a caller is in debt, its requests in flight may each end
    refused, so each counts against what is left of its bucket."""
    limiter, _ = _limiter([])
    key = "spiffe://cofre/a"  # burst 3, a unit every 0.5 s
    limiter.charge(key)  # in debt: 2 units left
    assert limiter.enter(key) is None
    assert limiter.enter(key) is None
    held = limiter.enter(key)
    assert held is not None  # the third at once: the episode opens
    assert held.audit


def test_refusals_past_the_limit_at_their_answer_are_held() -> None:
    """The first wave of a caller not in debt is let in whole, and bounded at the
    answer: past the limit, a refusal's entry is held (first of the episode written,
    the rest counted)."""
    limiter, _ = _limiter([])
    key = "spiffe://cofre/a"
    for _ in range(60):
        assert limiter.enter(key) is None
    answers = []
    for _ in range(60):
        limiter.leave(key)
        answers.append(limiter.charge(key, hold=True))
    assert answers[: LIMIT.burst] == [None] * LIMIT.burst
    held = [a for a in answers if a is not None]
    assert len(held) == 60 - LIMIT.burst
    assert [a.audit for a in held] == [True] + [False] * (len(held) - 1)


def test_an_unlimited_caller_is_never_held_for_its_requests_in_flight() -> None:
    limiter = RefusalLimiter(lambda _key: None, [].append)
    assert all(limiter.enter("spiffe://cofre/unlimited") is None for _ in range(10_000))


@given(st.lists(st.booleans(), min_size=1, max_size=40))
@settings(max_examples=60, deadline=None)
def test_leaving_every_request_leaves_nothing_in_flight(charges: list[bool]) -> None:
    limiter, _ = _limiter([], {"k": RateLimit(per_second=1.0, burst=100)})
    for _ in charges:
        assert limiter.enter("k") is None
    for charge in charges:
        limiter.leave("k")
        if charge:
            limiter.charge("k")
    assert not limiter._in_flight  # the bound this test is about


def test_a_service_within_its_rate_is_not_held_back_for_its_latency() -> None:
    """Review 36's reproducer: 80% of its rate behind a 3 s upstream, nothing refused;
    604 of 4,000 calls got 429 while every request in flight held a unit."""
    now = [0.0]
    limit = RateLimit(per_second=500, burst=1000)  # dev getnet-adapter, store, ledger
    limiter = RefusalLimiter(lambda _: limit, lambda _: None, clock=lambda: now[0])
    rate, latency = 400.0, 3.0
    pending: list[tuple[float, Admission]] = []
    refused = 0
    for i in range(int(rate * 10)):
        now[0] = i / rate
        while pending and pending[0][0] <= now[0]:
            pending.pop(0)[1].release()  # answered 200: nothing charged
        spent, admission = limiter.admit("spiffe://cofre/getnet-adapter")
        if spent is not None:
            refused += 1
        else:
            pending.append((now[0] + latency, admission))
    assert refused == 0
