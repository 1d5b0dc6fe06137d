"""Masking of anything that looks like a card number, for whatever leaves the vault.

IN PCI SCOPE. The `Pan` type already masks itself; this is the safety net for data that
did not come through it (a log message, a header a client sent, an exception from a
library, an acquirer's answer to the relay). It is the one PAN detector of the project:
the relay's answers, the logs, the audit details and the error bodies all use it, so a
representation it learns to see is masked everywhere at once.

What it sees, in text (`mask_pan_like`):

- a run of 12 or more ASCII digits: ``NNNNNNNNNNNNNNNN`` (also the integral part of a
  number written ``NNNNNNNNNNNNNNNN.0``);
- digit groups joined by one repeated separator of up to three non-alphanumeric
  characters: ``NNNN NNNN NNNN NNNN``, ``NNNN.NNNN.NNNN.NNNN``, ``4-1-1-1-…``, the text
  of a JSON array of digits ``[4,1,1,1,…]`` or ``["4","1",…]``. The separator must be the
  same throughout, so a timestamp (``2026-12-01 03:15:30,123``) is not a card.

and in JSON values (`mask_pan_values`): every string as above, every integer of 12 or
more digits, every float whose integral part has 12 or more digits (``4.111111111111111e15``
is the same card as its 16 digits in a row), and any run of consecutive list items that are
short digit strings or small integers (``[4, 1, 1, 1, …]``, ``["4111", "1111", …]``)
holding 12 or more digits together.

What it leaves alone: digit runs inside a hex word of exactly a digest's length (32, 40,
56, 64, 96 or 128 hex characters) with a letter among them (an MD5-sized trace id, a
SHA-1 or certificate serial, a SHA-2 digest). Those are hex noise, not
decimal data: one SHA-256 in five holds 12 digits in a row by chance, and masking them
made the policy hash a node logs at start unreadable. The suite's leak scan skips the
same words (tests/support/leakscan.py). A card glued to a hex word of any other length is
still masked: ``deadbeef`` four times then 16 digits is 48 characters, not a digest.

12 to 19 digits become the first six digits, asterisks and the last four, the most
PCI DSS 4.0.1 req. 3.4.1 allows to be shown; longer runs (not PANs, but a PAN may hide
inside) are masked entirely.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

MIN_DIGITS: Final = 12
MAX_DIGITS: Final = 19
# Items of a list that may be the pieces of a card number: up to six digits each.
_MAX_PIECE: Final = 6
_MAX_PIECE_INT: Final = 10**_MAX_PIECE - 1

# A hex word (32+ hex characters, alone) or a run of 12+ digits. The hex alternative is
# tried first at each position, so a digest is consumed whole and its inner digits are
# never seen as a run; a hex word without a letter is all digits and masked like a run.
_DIGIT_RUN: Final = re.compile(
    r"(?P<hex>(?<![0-9A-Za-z])[0-9A-Fa-f]{32,}(?![0-9A-Za-z]))|(?<![0-9])[0-9]{12,}(?![0-9])"
)
# Groups of 1 to 6 digits joined by one separator (repeated exactly, backreference) of
# one to three characters that are neither digits nor letters.
_GROUPED: Final = re.compile(
    r"(?<![0-9])[0-9]{1,6}(?P<sep>[^0-9A-Za-z]{1,3})[0-9]{1,6}(?:(?P=sep)[0-9]{1,6})+(?![0-9])"
)
_NOT_DIGIT: Final = re.compile(r"[^0-9]")
_PLAIN_RUN: Final = re.compile(r"(?<![0-9])[0-9]{12,}(?![0-9])")
_DIGEST_LENGTHS: Final = frozenset({32, 40, 56, 64, 96, 128})


def mask_digits(digits: str) -> str:
    """Return `digits` masked: BIN6, asterisks and last four for 12 to 19 digits, all
    asterisks for more, unchanged for fewer."""
    if len(digits) < MIN_DIGITS:
        return digits
    if len(digits) > MAX_DIGITS:
        return "*" * len(digits)
    return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]


def _mask_run(match: re.Match[str]) -> str:
    run = match.group(0)
    if match.group("hex") is None or run.isdigit():
        return mask_digits(run)
    if len(run) in _DIGEST_LENGTHS:
        return run  # a digest: hex noise, not a card
    return _PLAIN_RUN.sub(lambda inner: mask_digits(inner.group(0)), run)


def _mask_grouped(match: re.Match[str]) -> str:
    run = match.group(0)
    digits = _NOT_DIGIT.sub("", run)
    if len(digits) < MIN_DIGITS:
        return run
    # The separators stay where they were, so the shape (and a JSON text) is kept.
    masked = iter(mask_digits(digits))
    return "".join(next(masked) if char.isdigit() else char for char in run)


def mask_pan_like(text: str) -> str:
    """Return `text` with every PAN-like digit sequence masked (see the module text)."""
    if len(text) < MIN_DIGITS:
        # Both patterns mask only what holds at least 12 ASCII digits: a shorter text
        # (an HTTP method, a log level, most event names) is never changed.
        return text
    return _GROUPED.sub(_mask_grouped, _DIGIT_RUN.sub(_mask_run, text))


def _piece(value: object) -> str | None:
    """The digits of a list item that may be a piece of a card number, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 <= value <= _MAX_PIECE_INT:
        return str(value)
    if isinstance(value, str) and 1 <= len(value) <= _MAX_PIECE and value.isascii():
        return value if value.isdigit() else None
    return None


def _mask_list(items: list[Any]) -> list[Any]:
    out = [mask_pan_values(item) for item in items]
    start = 0
    while start < len(items):
        if _piece(items[start]) is None:
            start += 1
            continue
        end = start
        pieces: list[str] = []
        while end < len(items) and (piece := _piece(items[end])) is not None:
            pieces.append(piece)
            end += 1
        digits = "".join(pieces)
        if len(digits) >= MIN_DIGITS:
            masked = mask_digits(digits)
            offset = 0
            for index, piece in zip(range(start, end), pieces, strict=True):
                out[index] = masked[offset : offset + len(piece)]
                offset += len(piece)
        start = end
    return out


def _mask_number(value: int | float) -> int | float | str:
    if isinstance(value, float):
        if not (math.isfinite(value) and abs(value) >= 10 ** (MIN_DIGITS - 1)):
            return value
        return mask_digits(str(int(abs(value))))
    digits = str(abs(value))
    return mask_digits(digits) if len(digits) >= MIN_DIGITS else value


def mask_pan_values(value: Any) -> Any:
    """Return a copy of the JSON-like `value` (dicts, lists, strings, numbers) with every
    PAN-like value masked (see the module text). Masked numbers become strings."""
    if isinstance(value, str):
        return mask_pan_like(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _mask_number(value)
    if isinstance(value, dict):
        return {mask_pan_like(str(k)): mask_pan_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return _mask_list(list(value))
    return value
