"""Sensitive authentication data (PCI DSS 3.3.1) must never be stored after
authorisation, and token metadata is stored in clear: refuse it on the way in.

IN PCI SCOPE. Two independent signals, either one refuses:

- the key's name: `cvv`, `CVC2`, `card_security_code`, `pin`, `pinBlock`, `track2`,
  `track_data`, `magstripe`, ... (split into words, so `shipping` or `pinned` pass);
- the value's shape: magnetic-stripe track 1 or 2 (`%B<PAN>^NAME^YYMM...`,
  `;<PAN>=YYMM...`, also with EMV's `D` separator), an ISO 9564 PIN block whose fill
  shows it is in clear (formats 0 before the PAN XOR, 2 and 3), or a labelled code
  inside free text (`cvv: 123`, `pin 1234`).

A 3-digit value alone cannot be told from an amount, and an encrypted PIN block from a
random identifier: those are caught by name only. Messages never repeat the value.
"""

from __future__ import annotations

import re
from typing import Final

from vault.errors import SensitiveAuthenticationData

CARD_SECURITY_CODE: Final = "card security code"
PIN: Final = "PIN or PIN block"
TRACK: Final = "track data"

_WORD = re.compile(r"[A-Z]+\d*(?=[A-Z][a-z])|[A-Z]?[a-z]+\d*|[A-Z]+\d*|\d+")
_CSC_WORDS: Final = ("cvv", "cvv2", "cvc", "cvc2", "cvc3", "cvn", "cvn2", "csc", "cav2", "cvd")
_NAME_WORDS: Final[dict[str, str]] = {
    **dict.fromkeys((*_CSC_WORDS, "icvv", "dcvv", "cvk"), CARD_SECURITY_CODE),
    **dict.fromkeys(("pin", "pinblock", "pincode", "epb"), PIN),
    **dict.fromkeys(("track1", "track2", "track3", "magstripe", "trackdata"), TRACK),
}
# Compounds spelled over several words (`card_security_code`, `track_data`).
_NAME_COMPOUNDS: Final = (
    ("securitycode", CARD_SECURITY_CODE),
    ("cardverification", CARD_SECURITY_CODE),
    ("cardcode", CARD_SECURITY_CODE),
    ("pinblock", PIN),
    ("trackdata", TRACK),
    ("track1", TRACK),
    ("track2", TRACK),
    ("magstripe", TRACK),
    ("magneticstripe", TRACK),
)
_TRACK1 = re.compile(r"B\d{12,19}\^[^^]{0,26}\^\d{4}")
_TRACK2 = re.compile(r"(?<!\d)\d{12,19}[=D]\d{4}")
_LABELLED_CSC = re.compile(
    r"\b(?:cvv2?|cvc2?|cvn2?|csc|cav2|cvd|(?:card\s*)?security\s*code)\b\W{0,3}\d{3,4}\b",
    re.IGNORECASE,
)
_LABELLED_PIN = re.compile(r"\bpin(?:\s*(?:block|code))?\b\W{0,3}[0-9a-f]{4,16}\b", re.IGNORECASE)
_CLEAR_PIN_BLOCK = re.compile(r"[023]([4-9a-c])(\d{4,12})([a-f]+)", re.IGNORECASE)


def _name_kind(key: str) -> str | None:
    words = [w.lower() for w in _WORD.findall(key)]
    for word in words:
        if word in _NAME_WORDS:
            return _NAME_WORDS[word]
    joined = "".join(words)
    return next((kind for part, kind in _NAME_COMPOUNDS if part in joined), None)


def _is_clear_pin_block(value: str) -> bool:
    match = _CLEAR_PIN_BLOCK.fullmatch(value)
    if match is None or len(value) != 16:
        return False
    # The length nibble must match the PIN digits; format 0 and 2 fill with F.
    digits, fill = match.group(2), match.group(3)
    if int(match.group(1), 16) != len(digits):
        return False
    return value[0] == "3" or set(fill.upper()) == {"F"}


def _value_kind(value: str) -> str | None:
    if _TRACK1.search(value) or _TRACK2.search(value):
        return TRACK
    if _LABELLED_CSC.search(value):
        return CARD_SECURITY_CODE
    if _LABELLED_PIN.search(value) or _is_clear_pin_block(value):
        return PIN
    return None


def sensitive_value_kind(value: str) -> str | None:
    """Return the kind of sensitive authentication data `value` looks like (track data,
    a labelled card security code, a PIN or clear PIN block), or None."""
    return _value_kind(value)


def refuse_sensitive_authentication_data(key: str, value: str) -> None:
    """Return if the metadata item `key`: `value` is not sensitive authentication data.

    Raises `SensitiveAuthenticationData` naming the kind (card security code, PIN or PIN
    block, track data) and the key, never the value.
    """
    kind = _name_kind(key)
    if kind is not None:
        raise SensitiveAuthenticationData(
            f"metadata key {key!r} names sensitive authentication data ({kind}), which "
            "must never be stored (PCI DSS 3.3.1)"
        )
    kind = _value_kind(value)
    if kind is not None:
        raise SensitiveAuthenticationData(
            f"metadata value of {key!r} looks like sensitive authentication data ({kind}), "
            "which must never be stored (PCI DSS 3.3.1)"
        )
