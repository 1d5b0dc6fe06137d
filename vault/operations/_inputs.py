"""What a tokenize request may carry beside the card number: card details (expiry,
cardholder name, security code), metadata and a time to live.

IN PCI SCOPE. Metadata is stored in clear beside the token, so anything that looks like
a card number or sensitive authentication data is refused here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Final

from cofre.redaction import metadata_holds_pan_like
from policies.formats import FormatSpec, SecurityCodeRule
from vault.card import (
    CardBundle,
    SecurityCode,
    normalize_cardholder_name,
    normalize_expiry,
)
from vault.errors import InvalidMetadata, InvalidSecurityCode, InvalidTTL, SecurityCodeForbidden
from vault.models import TokenizeRequest
from vault.sad import refuse_sensitive_authentication_data

MAX_METADATA_ITEMS: Final = 16
MAX_METADATA_KEY: Final = 64
MAX_METADATA_VALUE: Final = 256
MAX_TTL_SECONDS: Final = 10 * 366 * 24 * 3600

_METADATA_KEY_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-."
)


def validate_metadata(metadata: object) -> str:
    """Return `metadata` as canonical JSON. Raises `InvalidMetadata` for too many or too
    long items, non-string values, or a key or value that looks like a card number
    (metadata is stored in clear, so a PAN in it would be a leak)."""
    if not metadata:
        return "{}"
    if not isinstance(metadata, Mapping):
        raise InvalidMetadata("metadata must be an object of string keys and values")
    if len(metadata) > MAX_METADATA_ITEMS:
        raise InvalidMetadata(f"metadata may have at most {MAX_METADATA_ITEMS} items")
    for key, value in metadata.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_METADATA_KEY:
            raise InvalidMetadata(f"metadata keys must be 1 to {MAX_METADATA_KEY} characters")
        if not set(key) <= _METADATA_KEY_CHARS:
            raise InvalidMetadata("metadata keys may use only letters, digits, '_', '-', '.'")
        if metadata_holds_pan_like(key):
            raise InvalidMetadata(
                "a metadata key looks like a card number; metadata is not encrypted"
            )
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
            raise InvalidMetadata(
                f"metadata values must be strings of at most {MAX_METADATA_VALUE} characters"
            )
        refuse_sensitive_authentication_data(key, value)
        if metadata_holds_pan_like(value):
            raise InvalidMetadata(
                f"metadata value {key!r} looks like a card number (12 or more digits with"
                " no letter between them read as one number); metadata is not encrypted"
            )
    return json.dumps(dict(metadata), sort_keys=True, separators=(",", ":"))


def expiry(now: datetime, ttl_seconds: int | None) -> datetime | None:
    if ttl_seconds is None:
        return None
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        raise InvalidTTL("ttl must be a whole number of seconds")
    if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise InvalidTTL(f"ttl must be between 1 and {MAX_TTL_SECONDS} seconds")
    return now + timedelta(seconds=ttl_seconds)


def card_bundle(request: TokenizeRequest, spec: FormatSpec, now: datetime) -> CardBundle:
    """Return the card bundle `request` asks to store, its details normalised.

    Raises `InvalidExpiry`, `CardExpired`, `InvalidCardholderName`,
    `InvalidSecurityCode` (a code that is not a `SecurityCode`), or
    `SecurityCodeForbidden` when `spec` forbids a code and one was sent."""
    code = request.security_code
    if code is not None:
        if not isinstance(code, SecurityCode):
            raise InvalidSecurityCode("a security code is 3 or 4 digits")
        if spec.security_code is SecurityCodeRule.FORBID:
            raise SecurityCodeForbidden(
                f"format {request.format!r} forbids a security code: send the card without it"
            )
    card_expiry, name = card_details(request.expiry, request.cardholder_name, now)
    return CardBundle(pan=request.pan, expiry=card_expiry, cardholder_name=name)


def card_details(
    card_expiry: str | None, cardholder_name: str | None, now: datetime
) -> tuple[str | None, str | None]:
    """The card's expiry and cardholder name as stored, each None when not sent (a
    blank name too): what tokenize and update (`vault.operations.update`) both take.
    Raises `InvalidExpiry`, `CardExpired`, `InvalidCardholderName`."""
    return (
        None if card_expiry is None else normalize_expiry(card_expiry, now),
        None if cardholder_name is None else normalize_cardholder_name(cardholder_name),
    )
