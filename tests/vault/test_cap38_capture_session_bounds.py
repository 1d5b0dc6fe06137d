"""Session 38: a stolen certificate of a shop's backend granted ``capture`` with no
``rate_limit`` in its policy (the test policy's payments identity, as the guide's
example had it) opens capture sessions in a loop, against the real SoftHSM token and
database. Each is a row, an audit entry and work for every node: before session 38
nothing bounded them. Now every identity granted ``capture`` has a bound of its own,
`capture_sessions` (a default the policy can raise): sessions opened per minute, with a
burst, and sessions open at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.errors import RateLimited
from policies.loader import parse_policy
from policies.models import CaptureSessionLimit
from tests.support.policies import clocked_vault_on
from tests.vault.test_capture import (
    GENEROUS,
    PAYMENTS,
    POLICY,
    _audit,
    _card,
    _count,
    _session,
    clock,
)
from vault.service import VaultService

__all__ = ["clock"]  # the fixture, imported for the tests here

DEFAULT = CaptureSessionLimit()


def _bounded(per_minute: int, burst: int, max_live: int) -> str:
    return POLICY.replace(
        'capture_origins = ["https://shop.example"]',
        'capture_origins = ["https://shop.example"]\n'
        f"capture_sessions = {{ per_minute = {per_minute}, burst = {burst}, "
        f"max_live = {max_live} }}",
        1,
    )


@pytest.fixture
def default_service(
    engine: Engine, hsm_provider: HSMProvider, clock: list[datetime]
) -> Iterator[VaultService]:
    with clocked_vault_on(engine, hsm_provider, POLICY, clock) as svc:
        yield svc


def test_the_guides_example_identity_has_no_rate_limit() -> None:
    """The identity the attack uses: `capture` and no `rate_limit`."""
    rules = parse_policy(POLICY, kind="toml").policy.identities[PAYMENTS.identity]
    assert rules.rate_limit is None
    assert rules.capture_sessions == DEFAULT


@pytest.mark.parametrize("hsm_provider", ["softhsm2"], indirect=True)
def test_an_identity_without_rate_limit_cannot_open_sessions_without_bound(
    default_service: VaultService, engine: Engine, clock: list[datetime]
) -> None:
    """Medium (fixed, session 38): the loop opened as many sessions as it was sent,
    each a row and an audit entry. Now the default bound's burst passes and the next
    is 429 `rate_limited`, audited, nothing stored; a minute later the rate's minute
    passes again."""
    for _ in range(DEFAULT.burst):
        _session(default_service)
    with pytest.raises(RateLimited) as limited:
        _session(default_service)
    assert limited.value.retry_after > 0
    assert _count(engine, "capture_sessions") == DEFAULT.burst
    assert len(_audit(engine, "capture.session.create")) == DEFAULT.burst + 1
    assert _audit(engine, "capture.session.create")[-1]["outcome"] == "denied"
    clock[0] += timedelta(minutes=1)
    for _ in range(DEFAULT.per_minute):
        _session(default_service)
    with pytest.raises(RateLimited):
        _session(default_service)


def test_the_policy_sets_the_rate_and_the_burst(
    engine: Engine, hsm_provider: HSMProvider, clock: list[datetime]
) -> None:
    """A policy may lower or raise the bound; its numbers are the ones enforced."""
    with clocked_vault_on(engine, hsm_provider, _bounded(2, 3, 100), clock) as service:
        for _ in range(3):
            _session(service)
        with pytest.raises(RateLimited):
            _session(service)
        clock[0] += timedelta(seconds=30)
        _session(service)
        with pytest.raises(RateLimited):
            _session(service)
    assert _count(engine, "capture_sessions") == 4


def test_sessions_open_at_once_are_bounded_and_a_used_or_ended_one_frees_its_place(
    engine: Engine, hsm_provider: HSMProvider, clock: list[datetime]
) -> None:
    """`max_live`: sessions not expired with captures left. A capture that spends one,
    or its expiry, frees its place; a refusal says when the next place frees."""
    with clocked_vault_on(engine, hsm_provider, _bounded(600, 600, 3), clock) as service:
        first = _session(service, ttl_seconds=60)
        _session(service, ttl_seconds=600)
        _session(service, ttl_seconds=600)
        with pytest.raises(RateLimited) as limited:
            _session(service)
        assert 59 <= limited.value.retry_after <= 60
        assert "max_live" in str(limited.value)
        service.capture_card(_card(first), per_session=GENEROUS, per_address=GENEROUS)
        fourth = _session(service, ttl_seconds=60)
        with pytest.raises(RateLimited):
            _session(service)
        clock[0] += timedelta(seconds=61)
        assert fourth.expires_at <= clock[0]
        _session(service)
    assert _count(engine, "capture_sessions") == 5
    denied = [e for e in _audit(engine, "capture.session.create") if e["outcome"] == "denied"]
    assert len(denied) == 2


@pytest.mark.parametrize(
    "bad",
    [
        "{ per_minute = 0, burst = 1, max_live = 1 }",
        "{ per_minute = 1, burst = 0, max_live = 1 }",
        "{ per_minute = 1, burst = 1, max_live = 0 }",
        "{ per_minute = 1, burst = 1, max_live = 1, unknown = 1 }",
    ],
)
def test_a_bound_that_admits_nothing_or_names_an_unknown_key_is_refused(bad: str) -> None:
    from policies.errors import PolicyError  # noqa: PLC0415 - only here

    text = POLICY.replace(
        'capture_origins = ["https://shop.example"]',
        f'capture_origins = ["https://shop.example"]\ncapture_sessions = {bad}',
        1,
    )
    with pytest.raises((PolicyError, ValueError)):
        parse_policy(text, kind="toml")
