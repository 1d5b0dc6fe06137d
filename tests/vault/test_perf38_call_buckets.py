"""`Limits.check_call_buckets` on its boundary: a call that sends no more cards than the
guard allows in one bucket is let through without hashing any of them (issue 21,
session 38), and the refusal of one that overfills a bucket is unchanged."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from policies.models import OracleGuard
from tests.support.pans import GENERATED, card_number
from vault import limits as limits_module
from vault.errors import OracleSuspected
from vault.limits import Limits
from vault.pan import Pan, luhn_check_digit

_NOW = datetime(2026, 12, 6, tzinfo=UTC)


def _one_bucket(count: int) -> list[Pan]:
    """`count` different 16-digit cards of one BIN and last four."""
    bodies = (f"411111{i:06d}000" for i in range(100 * count))
    cards = [b + luhn_check_digit(b) for b in bodies if luhn_check_digit(b) == "6"][:count]
    GENERATED.update(cards)  # the session's leak scan looks for them byte for byte
    return [Pan(card) for card in cards]


@pytest.mark.parametrize("allowed", [1, 3, 10])
def test_one_bucket_filled_to_the_limit_passes_and_one_more_card_is_refused(
    allowed: int,
) -> None:
    guard = OracleGuard(max_pans_per_bucket=allowed)
    cards = _one_bucket(allowed + 1)
    Limits.check_call_buckets(guard, cards[:allowed], _NOW)
    with pytest.raises(OracleSuspected):
        Limits.check_call_buckets(guard, cards, _NOW)


def test_the_same_card_sent_again_is_one_card_of_its_bucket() -> None:
    guard = OracleGuard(max_pans_per_bucket=2)
    card, other = _one_bucket(2)
    Limits.check_call_buckets(guard, [card, card, card, other, other], _NOW)


def test_many_buckets_one_card_each_pass() -> None:
    cards = [Pan(card_number("5", serial)) for serial in range(50)]
    Limits.check_call_buckets(OracleGuard(max_pans_per_bucket=1), cards, _NOW)


def test_a_call_within_the_limit_hashes_no_card(monkeypatch: pytest.MonkeyPatch) -> None:
    # A single tokenize's early check: one card cannot overfill any bucket.
    hashed: list[Pan] = []

    def counting(pan: Pan) -> bytes:
        hashed.append(pan)
        return b"bucket"

    monkeypatch.setattr(limits_module, "oracle_bucket", counting)
    cards = _one_bucket(3)
    Limits.check_call_buckets(OracleGuard(max_pans_per_bucket=3), cards, _NOW)
    Limits.check_call_buckets(OracleGuard(max_pans_per_bucket=3), cards[:1], _NOW)
    assert hashed == []
    with pytest.raises(OracleSuspected):
        Limits.check_call_buckets(OracleGuard(max_pans_per_bucket=2), cards, _NOW)
    assert len(hashed) == 3
