"""Card numbers for load generators. Every number made here is remembered, so that the
session's leak scan also looks for it byte for byte, in raw database pages where the
Luhn rule cannot look (tests/support/leakguard.py)."""

from __future__ import annotations

from vault.pan import luhn_check_digit

GENERATED: set[str] = set()


def card_number(prefix: str, serial: int, length: int = 16) -> str:
    """The Luhn-valid `length`-digit number `prefix`, then `serial` zero-padded."""
    body = f"{prefix}{serial:0{length - len(prefix) - 1}d}"
    pan = body + luhn_check_digit(body)
    GENERATED.add(pan)
    return pan


def cards_of_one_bucket(bin6: str, count: int) -> list[str]:
    """`count` different 16-digit cards of BIN `bin6` and last four ``0006``: one bucket
    of the oracle guard."""
    bodies = (f"{bin6}{i:06d}000" for i in range(100 * count))
    cards = [b + luhn_check_digit(b) for b in bodies if luhn_check_digit(b) == "6"][:count]
    GENERATED.update(cards)
    return cards
