"""`api._refusal_sieve` naming the token records its counts cover (session 40), with
clocks the test moves: the allowance of refusals about held records, the bound of
records named per count and the number of the others, a count that cannot be written.
The attack against a real vault is tests/api/test_refusal40_named_refusals.py."""

from __future__ import annotations

import pytest

from api._refusal_sieve import (
    COUNTED_ACTION,
    COUNTED_TOKEN_ACTION,
    NAMED_REFUSALS,
    UNMETERED_REFUSALS,
    RequestSieve,
)
from api.refusals import NAMED_TOKENS, SUMMARY_SECONDS
from audit.errors import AuditWriteFailed
from tests.api.test_refuse39_refusal_sieve import SERVICE, _limiters
from vault.service import AuditEvent, Outcome


def _record(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012x}"


def _denial(n: int) -> AuditEvent:
    return AuditEvent(
        action="detokenize",
        outcome=Outcome.DENIED,
        actor=SERVICE,
        token_id=_record(n),
        details={"reason": "this identity may not call detokenize"},
    )


def test_refusals_about_records_have_their_own_allowance_and_counts_name_them() -> None:
    written: list[AuditEvent] = []
    limiter, clocks = _limiters(written.append)
    # The other allowance spent first: refusals about records still have theirs.
    for _ in range(UNMETERED_REFUSALS.burst + 5):
        RequestSieve(limiter, lambda: SERVICE).hold("malformed_json")
    kept = [RequestSieve(limiter, lambda: SERVICE)(_denial(n)) for n in range(1_300)]
    # The whole burst written, and the first past it (an episode's first).
    assert kept.count(True) == NAMED_REFUSALS.burst + 1
    # A record asked for again is named once, with its number.
    for _ in range(2):
        RequestSieve(limiter, lambda: SERVICE)(_denial(1_299))
    clocks.now += SUMMARY_SECONDS
    limiter.flush()
    counts = [e for e in written if e.action == COUNTED_ACTION]
    named = [e for e in written if e.action == COUNTED_TOKEN_ACTION]
    (plain,) = [e for e in counts if e.details["limit"] == "refusal_entries"]
    (about,) = [e for e in counts if e.details["limit"] == "named_refusal_entries"]
    assert "tokens_named" not in plain.details  # its bytes as before session 40
    assert about.details["count"] == 1_300 - NAMED_REFUSALS.burst - 1 + 2
    assert about.details["tokens_named"] == len(named) == NAMED_TOKENS
    assert about.details["tokens_unnamed"] == 1_300 - NAMED_REFUSALS.burst - 1 - NAMED_TOKENS
    assert written.index(about) > max(written.index(e) for e in named)
    assert {e.actor for e in named} == {SERVICE}
    assert all(e.outcome is Outcome.DENIED for e in named)
    assert named[0].token_id == _record(NAMED_REFUSALS.burst + 1)
    assert named[0].details["codes"] == "policy_denied x1"
    assert sum(int(str(e.details["count"])) for e in named) == NAMED_TOKENS


def test_names_not_written_are_written_with_their_count() -> None:
    written: list[AuditEvent] = []
    failing = True

    def recorder(event: AuditEvent) -> None:
        if failing and event.action == COUNTED_ACTION:
            raise AuditWriteFailed("the audit log is down")
        written.append(event)

    limiter, clocks = _limiters(recorder)
    for n in range(NAMED_REFUSALS.burst + 4):
        RequestSieve(limiter, lambda: SERVICE)(_denial(n))
    clocks.now += SUMMARY_SECONDS
    with pytest.raises(AuditWriteFailed):
        limiter.flush()
    failing = False
    written.clear()
    limiter.flush(everything=True)
    (count,) = [e for e in written if e.action == COUNTED_ACTION]
    assert count.details["count"] == 3
    assert count.details["tokens_named"] == 3
    named = [e.token_id for e in written if e.action == COUNTED_TOKEN_ACTION]
    assert named == [_record(NAMED_REFUSALS.burst + n) for n in (1, 2, 3)]
