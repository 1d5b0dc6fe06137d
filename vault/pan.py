"""The `Pan` type: a primary account number that cannot be printed by accident.

IN PCI SCOPE, holds card data. A `Pan` shows only its BIN (first six) and last four
digits in `str`, `repr` and f-strings (PCI DSS 4.0.1 req. 3.4.1 allows at most
BIN and last four to be displayed), and fewer leading digits on PANs under 16
digits, so that six digits always stay hidden (`cofre.redaction.masked_leading`). The
digits leave only through `Pan.reveal()`, so every place that handles clear card data
is one ``grep reveal`` away.
"""

from __future__ import annotations

from typing import Final, NoReturn

from cofre.redaction import mask_digits
from vault.errors import InvalidPan

MIN_LENGTH: Final = 12
MAX_LENGTH: Final = 19
# d -> 2d, less 9 when over 9: the Luhn doubling of a digit, as characters.
_DOUBLED: Final = str.maketrans("0123456789", "0246813579")
# The normaliser strips only the two separators people and card readers actually print.
_SEPARATORS: Final = str.maketrans("", "", " -")


def luhn_valid(digits: str) -> bool:
    """Return whether `digits` (ASCII digits, at least two) passes the Luhn check.

    Returns ``False`` for anything that is not a run of ASCII digits; it never raises.
    """
    if len(digits) < 2 or not _is_ascii_digits(digits):
        return False
    return luhn_sum(digits) % 10 == 0


def luhn_sum(digits: str) -> int:
    """Return the Luhn sum of ASCII `digits`, check digit included (valid iff ``% 10 == 0``)."""
    # Every second digit from the right (the check digit is first) doubled, less 9 when
    # over 9: done by a table on the digit characters, then the digits summed as bytes.
    # A loop over the characters was ~6% of a batch's CPU (issue 21); the same sums
    # (tests/vault/test_pan.py checks them against the loop).
    chars = (digits[-1::-2] + digits[-2::-2].translate(_DOUBLED)).encode("ascii")
    return sum(chars) - 48 * len(chars)


def luhn_check_digit(payload: str) -> str:
    """Return the digit that makes ``payload + digit`` pass the Luhn check."""
    return str((10 - luhn_sum(payload + "0") % 10) % 10)


def _is_ascii_digits(text: str) -> bool:
    # str.isdigit() alone accepts full-width and Arabic-Indic digits, and superscripts;
    # a PAN must be exactly the ten ASCII code points, the only ASCII ones it accepts
    # (a test pins it over every code point). A loop over the characters was ~3% of a
    # batch's CPU (issue 21).
    return text.isascii() and text.isdigit()


class Pan:
    """A card number of 12 to 19 ASCII digits.

    ``Pan(text)`` accepts only ASCII digits, nothing else (no spaces, dashes, signs or
    Unicode digits); `Pan.normalize` strips spaces and dashes first. The Luhn check is not
    enforced here, because test and private-label PANs may fail it; call `luhn_valid`.

    Raises `InvalidPan` (a `ValueError`) whose message describes the problem without
    repeating the input.
    """

    __slots__ = ("_digits",)

    _digits: str

    def __init__(self, text: object) -> None:
        if not isinstance(text, str):
            raise InvalidPan(f"a PAN must be a string, not {type(text).__name__}")
        if not _is_ascii_digits(text):
            raise InvalidPan("a PAN must contain only the ASCII digits 0-9")
        if not MIN_LENGTH <= len(text) <= MAX_LENGTH:
            raise InvalidPan(
                f"a PAN must have {MIN_LENGTH} to {MAX_LENGTH} digits, this one has {len(text)}"
            )
        object.__setattr__(self, "_digits", text)

    @classmethod
    def normalize(cls, text: object) -> Pan:
        """Return a `Pan` from `text` after removing spaces and dashes.

        Raises `InvalidPan` when what is left is not a valid PAN.
        """
        if not isinstance(text, str):
            raise InvalidPan(f"a PAN must be a string, not {type(text).__name__}")
        return cls(text.translate(_SEPARATORS))

    def reveal(self) -> str:
        """Return the PAN's digits in clear. The only way out: call it only to encrypt,
        fingerprint, or answer a detokenize request that policy allows."""
        return self._digits

    @property
    def bin6(self) -> str:
        return self._digits[:6]

    @property
    def last4(self) -> str:
        return self._digits[-4:]

    def __len__(self) -> int:
        return len(self._digits)

    def masked(self) -> str:
        """Return the leading digits `cofre.redaction.masked_leading` allows, one ``*``
        per hidden digit, and the last four: ``411111******1111``, ``60******0004`` for
        12 digits (the same rule as every other masked card the vault prints)."""
        return mask_digits(self._digits)

    def luhn_valid(self) -> bool:
        return luhn_valid(self._digits)

    def __str__(self) -> str:
        return self.masked()

    def __repr__(self) -> str:
        return f"Pan('{self.masked()}')"

    def __format__(self, format_spec: str) -> str:
        return format(self.masked(), format_spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pan):
            return NotImplemented
        return self._digits == other._digits

    def __hash__(self) -> int:
        return hash(("Pan", self._digits))

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("Pan is immutable")

    def __reduce__(self) -> NoReturn:
        # Pickling would write the clear digits to wherever the pickle goes.
        raise TypeError("a Pan cannot be pickled")
