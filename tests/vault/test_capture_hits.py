"""Review 28, R28-3: a shopper's capture of a card the shop already holds as a token.

A capture comes from a browser: no certificate, only a session the shop's backend opened
and the card's number, which anyone holding the card has. It converges on the shop's
token like a call of the shop's own, but it may not change what the shop's backend chose
for that token: not its life (a capture asks none; it extended an expiring token to
for ever) and not the details it holds (the shopper's expiry and name replaced the
shop's, and later relays sent them). It fills in what the token lacks, and an expiry
that has passed (the card reissued under its number) gives way to the one typed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.models import RateLimit
from tests.support.policies import clocked_vault_on
from tests.vault.test_convergent_expiry import _stored_expiry
from vault.capture import CaptureResult, CaptureSessionRequest, CardCapture
from vault.pan import Pan
from vault.service import CallContext, TokenizeRequest, VaultService

SHOP = "https://shop.example"
FORMAT = "pan_bin6_last4"
POLICY = """
[identities."spiffe://cofre/payments"]
operations = ["tokenize", "capture", "detokenize_masked"]
formats = ["pan_bin6_last4"]
reveal = "masked"
capture_origins = ["https://shop.example"]

[identities."spiffe://cofre/getnet-adapter"]
operations = ["detokenize"]
reveal = "full"
read_domains = ["spiffe://cofre/payments"]
"""
PAYMENTS = CallContext("spiffe://cofre/payments", "req-shop")
GETNET = CallContext("spiffe://cofre/getnet-adapter", "req-getnet")
GENEROUS = RateLimit(per_second=100, burst=100)


@pytest.fixture
def clock() -> list[datetime]:
    return [datetime(2026, 12, 1, 12, 0, tzinfo=UTC)]


@pytest.fixture
def service(
    engine: Engine, hsm_provider: HSMProvider, clock: list[datetime]
) -> Iterator[VaultService]:
    with clocked_vault_on(engine, hsm_provider, POLICY, clock) as svc:
        yield svc


def _shopper_captures(service: VaultService, pan: str, **card: str) -> CaptureResult:
    session = service.create_capture_session(
        PAYMENTS, CaptureSessionRequest(origin=SHOP, formats=(FORMAT,))
    )
    capture = CardCapture(
        session_id=session.session_id,
        secret=session.secret,
        origin=SHOP,
        client_address="192.0.2.7",
        pan=Pan(pan),
        **card,  # type: ignore[arg-type]
    )
    return service.capture_card(capture, per_session=GENEROUS, per_address=GENEROUS)


def test_a_capture_leaves_the_shops_expiring_token_to_expire(
    service: VaultService, engine: Engine, clock: list[datetime]
) -> None:
    card = "4000000000000028"
    kept = service.tokenize(PAYMENTS, TokenizeRequest(Pan(card), FORMAT, ttl_seconds=600))
    assert kept.expires_at == clock[0] + timedelta(seconds=600)
    captured = _shopper_captures(service, card)
    assert captured.token.token == kept.token
    assert _stored_expiry(engine, kept.token) == kept.expires_at
    clock[0] += timedelta(seconds=700)
    assert service.purge_expired() >= 1  # shredded when the shop said


def test_a_capture_of_a_new_card_is_kept_until_deleted(
    service: VaultService, engine: Engine
) -> None:
    captured = _shopper_captures(service, "4000000000000036")
    assert captured.token.expires_at is None
    assert _stored_expiry(engine, captured.token.token) is None


def test_a_capture_keeps_the_shops_stored_details(service: VaultService) -> None:
    card = "4000000000000044"
    kept = service.tokenize(
        PAYMENTS,
        TokenizeRequest(Pan(card), FORMAT, expiry="03/29", cardholder_name="Ana Lima"),
    )
    captured = _shopper_captures(service, card, expiry="12/30", name="Mallory")
    assert captured.token.token == kept.token
    assert captured.expiry == "2030-12"  # the shopper is answered what they typed
    stored = service.detokenize(GETNET, kept.token)
    assert (stored.expiry, stored.cardholder_name) == ("2029-03", "Ana Lima")


def test_a_capture_fills_in_the_details_the_shops_token_lacks(service: VaultService) -> None:
    card = "4000000000000051"
    kept = service.tokenize(PAYMENTS, TokenizeRequest(Pan(card), FORMAT))
    _shopper_captures(service, card, expiry="12/30", name="Ana Lima")
    stored = service.detokenize(GETNET, kept.token)
    assert (stored.expiry, stored.cardholder_name) == ("2030-12", "Ana Lima")


def test_a_capture_replaces_a_stored_expiry_that_has_passed(
    service: VaultService, clock: list[datetime]
) -> None:
    """The card was reissued under its number: the stored expiry can no longer pay."""
    card = "4000000000000069"
    kept = service.tokenize(PAYMENTS, TokenizeRequest(Pan(card), FORMAT, expiry="12/26"))
    clock[0] = datetime(2027, 2, 1, 12, 0, tzinfo=UTC)
    _shopper_captures(service, card, expiry="12/30")
    assert service.detokenize(GETNET, kept.token).expiry == "2030-12"


def test_a_call_of_the_shop_still_replaces_stored_details(service: VaultService) -> None:
    """Unchanged for the shop's own backend: a reissued card's new expiry replaces the
    stored one (docs/api.md)."""
    card = "4000000000000077"
    kept = service.tokenize(PAYMENTS, TokenizeRequest(Pan(card), FORMAT, expiry="03/29"))
    service.tokenize(PAYMENTS, TokenizeRequest(Pan(card), FORMAT, expiry="04/31"))
    assert service.detokenize(GETNET, kept.token).expiry == "2031-04"
