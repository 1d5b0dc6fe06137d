"""A convergent hit and the expiry the call asks for (the tokens review's residual).

A card's token in a domain answers every later call for that card. The answer ignored
the call's `ttl_seconds`: a caller asking for a token that never expires (or one that
lives a day) was handed the card's existing token expiring in a minute, stored it, and
lost the card when the purge shredded it. A hit now lives at least as long as the call
asks (never shorter than it already does: another caller holds it too), and the audit
entry of the call that extends it says until when."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from tests.vault.conftest import GETNET, PAYMENTS
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService

VISA = Pan("4111111111111111")
MC = Pan("5555555555554444")


def _stored_expiry(engine: Engine, token: str) -> datetime | None:
    with engine.connect() as c:
        value = c.execute(
            sa.text("SELECT expires_at FROM tokens WHERE token = :t"), {"t": token}
        ).scalar_one()
    if isinstance(value, str):  # SQLite
        value = datetime.fromisoformat(value)
    return None if value is None else value.replace(tzinfo=value.tzinfo or UTC)


def _extensions(engine: Engine) -> list[str]:
    with engine.connect() as c:
        payloads = c.execute(
            sa.text("SELECT payload FROM audit_entries WHERE payload LIKE :p"),
            {"p": '%"action":"tokenize"%'},
        ).scalars()
        return [
            e["details"]["expires_at"]
            for e in map(json.loads, payloads)
            if "expires_at" in e["details"]
        ]


@pytest.fixture
def now(service: VaultService) -> list[datetime]:
    clock = [datetime.now(UTC).replace(microsecond=0)]
    service._clock = lambda: clock[0]  # type: ignore[method-assign]
    return clock


def test_a_hit_asked_never_to_expire_no_longer_expires(
    service: VaultService, engine: Engine, now: list[datetime]
) -> None:
    short = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4", ttl_seconds=60))
    kept = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4"))
    assert (kept.token, kept.existing, kept.expires_at) == (short.token, True, None)
    assert _stored_expiry(engine, kept.token) is None
    now[0] += timedelta(seconds=120)
    service.purge_expired()
    assert service.detokenize(GETNET, kept.token).pan == VISA
    assert _extensions(engine) == ["never"]


def test_a_hit_lives_as_long_as_the_longest_call_asks(
    service: VaultService, engine: Engine, now: list[datetime]
) -> None:
    first = service.tokenize(PAYMENTS, TokenizeRequest(MC, "pan_bin6_last4", ttl_seconds=60))
    longer = service.tokenize(PAYMENTS, TokenizeRequest(MC, "pan_bin6_last4", ttl_seconds=86_400))
    day = now[0] + timedelta(seconds=86_400)
    assert (longer.token, longer.expires_at) == (first.token, day)
    shorter = service.tokenize(PAYMENTS, TokenizeRequest(MC, "pan_bin6_last4", ttl_seconds=5))
    assert (shorter.token, shorter.expires_at) == (first.token, day)  # never shortened
    assert _stored_expiry(engine, first.token) == day
    assert _extensions(engine) == [day.isoformat()]


def test_a_batch_leaves_a_hit_at_its_longest_ask(
    service: VaultService, engine: Engine, now: list[datetime]
) -> None:
    first = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4", ttl_seconds=60))
    items = [
        TokenizeRequest(VISA, "pan_bin6_last4", ttl_seconds=3_600),
        TokenizeRequest(VISA, "pan_bin6_last4"),
        TokenizeRequest(VISA, "pan_bin6_last4", ttl_seconds=120),
    ]
    answers = service.tokenize_batch(PAYMENTS, items)
    assert {a.token for a in answers} == {first.token}
    assert _stored_expiry(engine, first.token) is None
    assert answers[1].expires_at is None
