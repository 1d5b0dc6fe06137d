"""Session 37: a capture session as someone other than its shopper uses it, against the
real SoftHSM token and database (the vault's own capture path, no listener): someone
who knows only its id, another shop with sessions of its own, a replay of a capture.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.errors import RateLimited
from policies.models import RateLimit
from tests.support.policies import clocked_vault_on
from tests.vault.test_capture import (
    GENEROUS,
    LUHN_BAD,
    PAYMENTS,
    POLICY,
    SHOP,
    _card,
    _count,
    _session,
    clock,
)
from vault.capture import CaptureSessionRequest, refusal_origin
from vault.errors import (
    CaptureSessionUsed,
    CaptureUnauthorized,
    InvalidPan,
    OriginNotAllowed,
    TokenNotFound,
)
from vault.pan import Pan
from vault.service import CallContext, VaultService

__all__ = ["clock"]  # the fixture, imported for the tests here

OTHER_SHOP = "https://other-shop.example"
OTHER = CallContext("spiffe://cofre/other-shop", "req-other")
POLICY_TWO_SHOPS = (
    POLICY
    + f"""
[identities."{OTHER.identity}"]
description = "another shop's backend, with capture sessions of its own"
scope = "out"
operations = ["capture", "detokenize_masked"]
formats = ["pan_bin6_last4", "uuid"]
reveal = "masked"
capture_origins = ["{OTHER_SHOP}"]
"""
)
TIGHT = RateLimit(per_second=0.001, burst=3)


@pytest.fixture
def service(
    engine: Engine, hsm_provider: HSMProvider, clock: list[datetime]
) -> Iterator[VaultService]:
    with clocked_vault_on(engine, hsm_provider, POLICY_TWO_SHOPS, clock) as svc:
        yield svc


def test_guesses_from_many_addresses_never_refuse_the_sessions_secret(
    service: VaultService, engine: Engine
) -> None:
    """Medium (fixed, session 37): wrong secrets from anyone who learnt the id, from
    as many addresses as they like, spent the one bucket the right secret was charged
    to; the shopper's capture was 429 for the session's life."""
    session = _session(service)
    for n in range(5):
        card = _card(session, secret=f"cofre_cs_guess{n}", client_address=f"198.51.100.{n}")
        error = CaptureUnauthorized if n < 3 else RateLimited
        with pytest.raises(error):
            service.capture_card(card, per_session=TIGHT, per_address=GENEROUS)
    service.capture_card(_card(session), per_session=TIGHT, per_address=GENEROUS)
    assert _count(engine, "tokens") == 1


def test_the_secrets_holder_is_still_limited_per_session(service: VaultService) -> None:
    """The holder's bucket bounds its tries as the one bucket did: a script that reads
    the secret and tries cards through the session is 429 past it (unreadable by the
    session's origin, as before)."""
    session = _session(service)
    for _ in range(3):
        with pytest.raises(InvalidPan):
            service.capture_card(
                _card(session, pan=Pan(LUHN_BAD)), per_session=TIGHT, per_address=GENEROUS
            )
    with pytest.raises(RateLimited) as limited:
        service.capture_card(_card(session), per_session=TIGHT, per_address=GENEROUS)
    assert refusal_origin(limited.value) is None


def test_another_shop_cannot_use_a_session_nor_read_its_token(service: VaultService) -> None:
    """Held: another shop (its own identity, origin and sessions) sends its own secret
    to the first shop's session (401), the first shop's secret from its own page's
    origin (403, as any other origin), and reads the token captured (as one never
    issued); the token is the first shop's."""
    session = _session(service)
    request = CaptureSessionRequest(origin=OTHER_SHOP, formats=("pan_bin6_last4",))
    theirs = service.create_capture_session(OTHER, request)
    with pytest.raises(CaptureUnauthorized):
        service.capture_card(
            _card(session, secret=theirs.secret, origin=OTHER_SHOP),
            per_session=GENEROUS,
            per_address=GENEROUS,
        )
    with pytest.raises(OriginNotAllowed):
        service.capture_card(
            _card(session, origin=OTHER_SHOP), per_session=GENEROUS, per_address=GENEROUS
        )
    result = service.capture_card(_card(session), per_session=GENEROUS, per_address=GENEROUS)
    with pytest.raises(TokenNotFound):
        service.detokenize_masked(OTHER, result.token.token)
    assert service.detokenize_masked(PAYMENTS, result.token.token).masked == result.masked


def test_a_replayed_capture_stores_nothing_more(service: VaultService, engine: Engine) -> None:
    """Held: the same capture (session, secret, card) sent again, as a proxy that
    retries or someone who recorded it would, is 409 on a single-use session, and
    leaves one token and one use; readable by the session's origin, which owns it."""
    session = _session(service)
    card = _card(session)
    service.capture_card(card, per_session=GENEROUS, per_address=GENEROUS)
    with pytest.raises(CaptureSessionUsed) as used:
        service.capture_card(card, per_session=GENEROUS, per_address=GENEROUS)
    assert refusal_origin(used.value) == SHOP
    assert _count(engine, "tokens") == 1
