"""Card bundles: the PAN with its expiry date and cardholder name, and the card security
code as a type that cannot be printed.

IN PCI SCOPE, holds card data. A bundle is sealed as one AES-256-GCM plaintext under
the PAN data key (the AAD of `vault.keyring.pan_aad` binds it to its token row), so the
expiry and the name are never stored apart from the PAN nor in clear.

Plaintext layouts (both authenticated, so the layout cannot be switched by an attacker):

- a bare PAN: its ASCII digits, as every token stored before card bundles;
- a bundle: canonical JSON ``{"exp": "YYYY-MM", "name": "...", "pan": "...", "v": 1}``
  (``exp`` and ``name`` optional). It starts with ``{``, which no PAN does.

Normalised forms:

- **expiry** is accepted as ``MM/YY`` (what the card shows and what a payment form
  sends) or ``YYYY-MM`` (ISO 8601), and always stored and answered as ``YYYY-MM``. A
  card is valid through the last day of its month *anywhere on Earth*: it is refused
  as expired (`CardExpired`) once that day has ended in UTC-12, and refused as
  implausible (`InvalidExpiry`) more than `MAX_YEARS_AHEAD` years ahead.
- **cardholder name** is Unicode NFC, whitespace collapsed to single spaces, at most
  `MAX_NAME_LENGTH` characters, no control or format characters, and never a card
  number or a security code in disguise: a run of three digits or more (after NFKC,
  so full-width digits count) is refused. A blank name is the same as none.
- **security code** is 3 or 4 ASCII digits (CVV2, CVC2, CID), carried as
  `SecurityCode`, whose `str` and `repr` show only asterisks.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, NoReturn

from vault.errors import (
    CardExpired,
    IntegrityError,
    InvalidCardholderName,
    InvalidExpiry,
    InvalidSecurityCode,
)
from vault.pan import Pan
from vault.sad import sensitive_value_kind

MAX_NAME_LENGTH: Final = 64
# Checked before normalising, so that a huge input costs nothing.
MAX_NAME_INPUT: Final = 256
MAX_YEARS_AHEAD: Final = 20
# The last time zone to leave a day is UTC-12: a card expiring in May is good until
# 1 June 12:00 UTC.
_EARTH_LAG: Final = timedelta(hours=12)
_CARD_FACE = re.compile(r"(0[1-9]|1[0-2])/([0-9]{2})")
_ISO_MONTH = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")
_DIGIT_RUN = re.compile(r"[0-9]{3,}")
# What may stand between the digits of one run in a name: anything but a letter.
_NOT_ALNUM = re.compile(r"[\W_]+")
_BUNDLE_VERSION: Final = 1


def normalize_expiry(text: object, now: datetime) -> str:
    """Return the card expiry `text` (``MM/YY`` or ``YYYY-MM``) as ``YYYY-MM``.

    `now` is an aware UTC time. Raises `InvalidExpiry` for another shape or a date more
    than `MAX_YEARS_AHEAD` years ahead, `CardExpired` for a month that has ended
    everywhere on Earth. Messages never repeat the input.
    """
    if not isinstance(text, str) or len(text) > 7:
        raise InvalidExpiry("the expiry must be MM/YY or YYYY-MM")
    if match := _CARD_FACE.fullmatch(text):
        month, year = int(match.group(1)), 2000 + int(match.group(2))
    elif match := _ISO_MONTH.fullmatch(text):
        year, month = int(match.group(1)), int(match.group(2))
    else:
        raise InvalidExpiry("the expiry must be MM/YY or YYYY-MM")
    if year > now.year + MAX_YEARS_AHEAD:
        raise InvalidExpiry(f"the expiry is more than {MAX_YEARS_AHEAD} years ahead")
    if year < 1:
        raise InvalidExpiry("the expiry year is not a calendar year")
    # Compared as (year, month) pairs, never by building a date from the input: the
    # month after 9999-12 is past what a datetime holds, and that was a 500.
    last_zone = now - _EARTH_LAG
    if (last_zone.year, last_zone.month) > (year, month):
        raise CardExpired("the card has expired")
    return f"{year:04d}-{month:02d}"


def normalize_cardholder_name(text: object) -> str | None:
    """Return the cardholder name `text` normalised (NFC, single spaces), or None when
    it is blank.

    Raises `InvalidCardholderName` for a non-string, a name over `MAX_NAME_LENGTH`
    characters, control or format characters, a run of three or more digits (only a
    letter between two digits breaks a run), or text
    that looks like sensitive authentication data. Messages never repeat the input.
    """
    if not isinstance(text, str):
        raise InvalidCardholderName("the cardholder name must be a string")
    if len(text) > MAX_NAME_INPUT:
        raise InvalidCardholderName(
            f"the cardholder name must be at most {MAX_NAME_LENGTH} characters"
        )
    name = " ".join(unicodedata.normalize("NFC", text).split())
    if not name:
        return None
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidCardholderName(
            f"the cardholder name must be at most {MAX_NAME_LENGTH} characters"
        )
    if any(unicodedata.category(char)[0] in "CZ" and char != " " for char in name):
        raise InvalidCardholderName("the cardholder name holds control or format characters")
    # NFKC folds full-width and other compatibility digits to ASCII: a card number or a
    # security code cannot hide in the name in another script's digits.
    folded = unicodedata.normalize("NFKC", name)
    # Digits with spaces or punctuation between them are one run (`4 1 1 1 …`, `7-3-7`).
    if _DIGIT_RUN.search(_NOT_ALNUM.sub("", folded)) or any(
        unicodedata.category(char) == "Nd" and not char.isascii() for char in folded
    ):
        raise InvalidCardholderName(
            "the cardholder name holds a run of digits (a card number or a security "
            "code must not ride in the name)"
        )
    if sensitive_value_kind(folded) is not None:
        raise InvalidCardholderName("the cardholder name looks like sensitive authentication data")
    return name


class SecurityCode:
    """A card security code (CVV2, CVC2, CID): 3 or 4 ASCII digits.

    Its `str`, `repr` and format show asterisks only; the digits leave only through
    `SecurityCode.reveal()`. Raises `InvalidSecurityCode` (never repeating the input).
    """

    __slots__ = ("_digits",)

    _digits: str

    def __init__(self, text: object) -> None:
        if not isinstance(text, str) or not 3 <= len(text) <= 4:
            raise InvalidSecurityCode("a security code is 3 or 4 digits")
        if not all("0" <= char <= "9" for char in text):
            raise InvalidSecurityCode("a security code is 3 or 4 digits")
        object.__setattr__(self, "_digits", text)

    def reveal(self) -> str:
        """Return the digits: only to seal them, or to put them in a relay request."""
        return self._digits

    def __len__(self) -> int:
        return len(self._digits)

    def __str__(self) -> str:
        return "***"

    def __repr__(self) -> str:
        return "SecurityCode('***')"

    def __format__(self, format_spec: str) -> str:
        return format("***", format_spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecurityCode):
            return NotImplemented
        return self._digits == other._digits

    def __hash__(self) -> int:
        return hash(("SecurityCode", self._digits))

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("SecurityCode is immutable")

    def __reduce__(self) -> NoReturn:
        raise TypeError("a SecurityCode cannot be pickled")


@dataclass(frozen=True, slots=True)
class CardBundle:
    """The PAN and, when given, its expiry (``YYYY-MM``) and cardholder name, as sealed
    together under one AEAD. `repr` shows the masked PAN only."""

    pan: Pan
    expiry: str | None = None
    cardholder_name: str | None = field(default=None, repr=False)

    @property
    def has_details(self) -> bool:
        return self.expiry is not None or self.cardholder_name is not None

    def merged_over(self, older: CardBundle) -> CardBundle:
        """This bundle, with what it lacks taken from `older` (the same card stored
        before): a new expiry replaces the old one, a missing name keeps the old."""
        return CardBundle(
            pan=self.pan,
            expiry=self.expiry or older.expiry,
            cardholder_name=self.cardholder_name or older.cardholder_name,
        )

    def filled_into(self, older: CardBundle, now: datetime) -> CardBundle:
        """`older` (the same card stored before) with what it lacks taken from this
        bundle: a stored name and expiry stay, but one whose expiry has passed (`now`)
        takes this one (the card reissued under its number: the stored expiry cannot
        pay). What a capture, sent by a shopper, may change on the shop's token (R28-3)."""
        kept = older.expiry
        if kept is not None and self.expiry is not None:
            try:
                normalize_expiry(kept, now)
            except CardExpired:
                kept = None
        return CardBundle(
            pan=self.pan,
            expiry=kept or self.expiry,
            cardholder_name=older.cardholder_name or self.cardholder_name,
        )

    def seal(self) -> bytes:
        """Return the plaintext to encrypt (see the module text for both layouts)."""
        if not self.has_details:
            return self.pan.reveal().encode("ascii")
        document: dict[str, object] = {"v": _BUNDLE_VERSION, "pan": self.pan.reveal()}
        if self.expiry is not None:
            document["exp"] = self.expiry
        if self.cardholder_name is not None:
            document["name"] = self.cardholder_name
        return json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")

    @classmethod
    def open(cls, clear: bytes) -> CardBundle:
        """Return the bundle of a decrypted plaintext. Raises `IntegrityError` for a
        layout this code does not know (the ciphertext authenticated, so it was written
        by a newer vault or by a bug: never guess)."""
        if not clear.startswith(b"{"):
            return cls(Pan(clear.decode("ascii")))
        unknown = IntegrityError("a stored card bundle has a layout this vault does not know")
        try:
            document = json.loads(clear.decode("utf-8"))
            version, digits = document.get("v"), document["pan"]
            expiry, name = document.get("exp"), document.get("name")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise unknown from None
        if version != _BUNDLE_VERSION:
            raise unknown
        return cls(Pan(digits), expiry, name)


def pan_digits(clear: bytes) -> bytes:
    """Return the PAN's ASCII digits from a decrypted plaintext of either layout (what
    fingerprints are computed over)."""
    return CardBundle.open(clear).pan.reveal().encode("ascii")


def format_expiry(expiry: str, layout: str) -> str:
    """Return the stored expiry ``YYYY-MM`` laid out as an upstream wants it:
    ``MM/YY``, ``MM/YYYY``, ``MMYY``, ``YYYY-MM``, ``MM`` (the month), ``YY`` or ``YYYY``
    (the year). Raises `ValueError` for another layout."""
    year, month = expiry[:4], expiry[5:7]
    layouts = {
        "MM/YY": f"{month}/{year[2:]}",
        "MM/YYYY": f"{month}/{year}",
        "MMYY": f"{month}{year[2:]}",
        "YYYY-MM": f"{year}-{month}",
        "MM": month,
        "YY": year[2:],
        "YYYY": year,
    }
    if layout not in layouts:
        raise ValueError(f"unknown expiry layout {layout!r}")
    return layouts[layout]
