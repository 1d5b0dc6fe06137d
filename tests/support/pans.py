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
