"""Review 28b (attacker): what a shopper's capture may change in the card the shop's
token holds (`CardBundle.filled_into`, R28-3), at the edges of an expiry's month, and the
security code it holds for the shop's next relay."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.softhsm import destroy_code_epochs
from tests.vault.test_capture import PAYMENTS, POLICY, _capture, _card, _session
from vault.card import CardBundle, SecurityCode
from vault.models import TokenizeRequest
from vault.pan import Pan
from vault.service import VaultService

VISA = Pan("4111111111111111")


def _merge(stored: str | None, name: str | None, sent: str | None, now: datetime) -> CardBundle:
    older = CardBundle(pan=VISA, expiry=stored, cardholder_name=name)
    return CardBundle(pan=VISA, expiry=sent, cardholder_name="MALLORY").filled_into(older, now)


@pytest.mark.parametrize(
    ("stored", "now", "kept"),
    [
        # This month: valid everywhere until its last day ends in UTC-12: kept.
        ("2026-12", datetime(2026, 12, 31, 23, 59, tzinfo=UTC), True),
        # Last month, but still November somewhere on Earth (12 h behind UTC): kept.
        ("2026-11", datetime(2026, 12, 1, 11, 59, tzinfo=UTC), True),
        # November has ended everywhere: the shopper's reissued expiry replaces it.
        ("2026-11", datetime(2026, 12, 1, 12, 0, tzinfo=UTC), False),
        ("2020-01", datetime(2026, 12, 1, 12, 0, tzinfo=UTC), False),
        # A stored expiry years ahead is the shop's: kept.
        ("2045-12", datetime(2026, 12, 1, 12, 0, tzinfo=UTC), True),
    ],
)
def test_a_capture_replaces_only_an_expiry_that_has_passed_everywhere(
    stored: str, now: datetime, kept: bool
) -> None:
    """Holds: a stored expiry still valid anywhere is never replaced by a capture."""
    merged = _merge(stored, "ALICE", "2030-05", now)
    assert merged.expiry == (stored if kept else "2030-05")
    assert merged.cardholder_name == "ALICE"  # a stored name is never overwritten


def test_a_capture_without_an_expiry_keeps_a_passed_one_and_changes_nothing() -> None:
    """Holds: no expiry sent, nothing replaced (not even a passed one): no write."""
    older = CardBundle(pan=VISA, expiry="2020-01", cardholder_name="ALICE")
    assert CardBundle(pan=VISA).filled_into(older, datetime(2026, 12, 4, tzinfo=UTC)) == older


def test_a_capture_fills_a_name_the_shop_never_stored() -> None:
    """Holds as documented (R28-3 "fills missing ones"), noted for the lead: a shopper
    who knows the card number sets the name on the shop's token when the shop stored
    none; the relay then sends that name. Convergence already hands the same token to
    whoever holds the number, so this adds no access, only a detail."""
    merged = _merge("2030-01", None, None, datetime(2026, 12, 4, tzinfo=UTC))
    assert merged.cardholder_name == "MALLORY"
    assert merged.expiry == "2030-01"


# --- service level: the security code a capture holds on the shop's token ------------


NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def service(engine: Engine, rotation_provider: HSMProvider) -> Iterator[VaultService]:
    """On the rotation token: holding a code makes an epoch key (`cofre-csc-e*`), which
    must not stay on the shared one."""
    # test_capture's policy, the shop's backend in scope and also tokenizing (a shop
    # that takes cards on its own server, e.g. for a delayed authorisation, too).
    text = POLICY.replace('scope = "out"', 'scope = "in"', 1).replace(
        'operations = ["capture", "detokenize_masked"]',
        'operations = ["capture", "tokenize", "detokenize_masked"]',
        1,
    )
    policy = PolicyEngine(parse_policy(text, kind="toml").policy)
    svc = VaultService(engine, rotation_provider, policy, clock=lambda: NOW)
    svc.initialize()
    yield svc
    svc.close()
    destroy_code_epochs(rotation_provider)


def _held(service: VaultService, engine: Engine, token_id: str, token: str) -> str | None:
    with engine.begin() as connection:
        code = service._codes.take(connection, token_id=token_id, token=token, now=NOW)
    return None if code is None else code.reveal()


def test_a_shoppers_capture_keeps_the_security_code_the_shop_holds(
    service: VaultService, engine: Engine
) -> None:
    """R28b-T1, severity low (needs the card number; integrity of what the shop holds).

    R28-3 says a shopper's capture changes neither the life nor the details the shop's
    token holds, but the security code held for the shop's next relay is replaced:
    `_store_tokens` -> `_hold_codes` runs for a capture's item as for the backend's
    ("replacing any code that token held"). The shop's backend tokenizes a card with its
    code for a delayed authorisation; anyone who knows the number (a fraudster with a
    skimmed card, the same card at the shop's checkout) captures it with a wrong code
    through the shop's checkout, and the shop's authorisation carries the wrong code
    (declined, or counted against the card by the issuer).

    Suggested fix: with `shopper`, hold the capture's code only on a token the call made
    (or one holding no code), as `filled_into` fills only missing details."""
    record = service.tokenize(
        PAYMENTS,
        TokenizeRequest(pan=VISA, format="pan_bin6_last4", security_code=SecurityCode("123")),
    )
    captured = _capture(service, _card(_session(service), security_code="999"))
    assert captured.token.token == record.token  # the shop's own token, by convergence
    assert _held(service, engine, record.token_id, record.token) == "123"
