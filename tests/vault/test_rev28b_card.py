"""Review 28b (attacker): what a shopper's capture may change in the card the shop's
token holds (`CardBundle.filled_into`, R28-3), at the edges of an expiry's month."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from vault.card import CardBundle
from vault.pan import Pan

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
