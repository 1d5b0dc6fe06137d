"""`api._refusal_sieve` on its own, with clocks the test moves: which vault entries are
refusals, the allowance of a service without a rate limit, its counts by code, a
count that cannot be written. The attack against a real vault is
tests/api/test_refuse39_unmetered_refusals.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from api._refusal_sieve import (
    COUNTED_ACTION,
    UNMETERED_REFUSALS,
    RequestSieve,
    refusal_code,
    unmetered_limiter,
)
from api.refusals import SUMMARY_SECONDS, RefusalLimiter
from audit.errors import AuditWriteFailed
from audit.log import sieved
from policies.models import RateLimit
from tests.api.test_refusals import _Clocks
from vault.service import AuditEvent, DetailValue, Outcome, refusal_sieve

SERVICE = "spiffe://cofre/shop-backend"  # no rate_limit
LIMITED = "spiffe://cofre/limited"


def _event(outcome: Outcome, **details: DetailValue) -> AuditEvent:
    return AuditEvent(action="capture", outcome=outcome, actor=SERVICE, details=details)


def _discard(_: AuditEvent) -> None:
    pass


def _limiters(recorder: Callable[[AuditEvent], None]) -> tuple[RefusalLimiter, _Clocks]:
    """The sieve's limiter beside a refusal bucket that limits `LIMITED` only."""
    clocks = _Clocks()
    metered = RefusalLimiter(
        lambda key: RateLimit(per_second=1, burst=2) if key == LIMITED else None, recorder
    )
    return unmetered_limiter(metered, recorder, clock=clocks.mono, wall=clocks.wall), clocks


@pytest.mark.parametrize(
    ("outcome", "details", "code"),
    [
        (Outcome.DENIED, {"error": "rate_limited"}, "rate_limited"),
        (Outcome.DENIED, {"reason": "not granted", "format": "uuid"}, "policy_denied"),
        (Outcome.FAILED, {"error": "invalid_capture_request"}, "invalid_capture_request"),
        (Outcome.DENIED, {"error": "oracle_suspected"}, "oracle_suspected"),
        # Answers about what the vault holds, an upstream's failure, the vault's own.
        (Outcome.FAILED, {"error": "token_not_found"}, None),
        (Outcome.FAILED, {"error": "idempotency_conflict"}, None),
        (Outcome.FAILED, {"error": "upstream_timeout"}, None),
        (Outcome.FAILED, {"error": "storage_unavailable"}, None),
        (Outcome.FAILED, {"error": "not a code"}, None),
        (Outcome.FAILED, {}, None),
    ],
)
def test_only_refusals_the_refusal_bucket_charges_are_sieved(
    outcome: Outcome, details: dict[str, DetailValue], code: str | None
) -> None:
    assert refusal_code(_event(outcome, **details)) == code


def test_past_the_allowance_refusals_are_counted_by_code() -> None:
    written: list[AuditEvent] = []
    limiter, clocks = _limiters(written.append)
    kept = 0
    for i in range(1_000):
        request = RequestSieve(limiter, lambda: SERVICE)
        kept += request(_event(Outcome.DENIED, error="rate_limited" if i % 2 else "not_found"))
    # The burst, and the first of the episode; nothing else while the clock stands.
    assert kept == UNMETERED_REFUSALS.burst + 1
    clocks.now += SUMMARY_SECONDS
    limiter.flush()
    (count,) = written
    assert count.action == COUNTED_ACTION
    assert count.actor == SERVICE
    assert count.outcome is Outcome.DENIED
    assert count.details["count"] == 1_000 - kept
    assert count.details["limit"] == "refusal_entries"
    assert count.details["codes"] == "rate_limited x450, not_found x449"


def test_a_request_counted_once_writes_nothing_more() -> None:
    limiter, _ = _limiters(_discard)
    for _ in range(UNMETERED_REFUSALS.burst + 1):
        RequestSieve(limiter, lambda: SERVICE).hold("policy_denied")
    request = RequestSieve(limiter, lambda: SERVICE)
    held = request.hold("policy_denied")
    assert held is not None
    assert not held.audit
    assert request.counted
    # The guard's own entry for the same request is neither written nor counted again.
    again = request.hold("policy_denied")
    assert again is not None
    assert not again.audit


def test_a_request_asked_again_spends_one_unit() -> None:
    """A call begun on the event loop runs again in a thread, asking again."""
    written: list[AuditEvent] = []
    limiter, _ = _limiters(written.append)
    kept = 0
    for _ in range(1_000):
        request = RequestSieve(limiter, lambda: SERVICE)
        kept += request(_event(Outcome.DENIED, error="rate_limited"))
        assert request(_event(Outcome.DENIED, error="rate_limited")) == (not request.counted)
    assert kept == UNMETERED_REFUSALS.burst + 1
    limiter.flush(everything=True)
    assert [e.details["count"] for e in written] == [1_000 - kept]


def test_a_limited_caller_or_none_is_left_to_its_bucket() -> None:
    limiter, _ = _limiters(_discard)
    for caller in (LIMITED, None):
        request = RequestSieve(limiter, lambda caller=caller: caller)  # type: ignore[misc]
        for _ in range(1_000):
            assert request.hold("policy_denied") is None


def test_a_success_is_never_sieved() -> None:
    counted: list[AuditEvent] = []

    def counting(event: AuditEvent) -> bool:
        counted.append(event)
        return False

    with refusal_sieve(counting):
        assert sieved(_event(Outcome.SUCCESS, session="s"))
        assert not sieved(_event(Outcome.DENIED, error="rate_limited"))
    assert sieved(_event(Outcome.DENIED, error="rate_limited"))  # no sieve: written
    assert len(counted) == 1


def test_a_count_that_cannot_be_written_is_kept_with_its_codes() -> None:
    """Fail closed: the refusals were answered (a refusal grants nothing); their count
    stays in memory and is written by a later flush or at the stop."""
    failing = True
    written: list[AuditEvent] = []

    def recorder(event: AuditEvent) -> None:
        if failing:
            raise AuditWriteFailed("the audit log is down")
        written.append(event)

    limiter, clocks = _limiters(recorder)
    for _ in range(UNMETERED_REFUSALS.burst + 4):
        RequestSieve(limiter, lambda: SERVICE).hold("malformed_json")
    clocks.now += SUMMARY_SECONDS
    with pytest.raises(AuditWriteFailed):
        limiter.flush()
    failing = False
    limiter.flush(everything=True)
    (count,) = written
    assert count.details["count"] == 3
    assert count.details["codes"] == "malformed_json x3"


def test_an_entry_that_could_not_be_written_is_counted_by_the_sieve() -> None:
    written: list[AuditEvent] = []
    limiter, _ = _limiters(written.append)
    request = RequestSieve(limiter, lambda: SERVICE)
    assert request.count("not_found")
    assert request.counted
    assert not RequestSieve(limiter, lambda: LIMITED).count("not_found")
    limiter.flush(everything=True)
    assert [e.details["codes"] for e in written] == ["not_found x1"]
