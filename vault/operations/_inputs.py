"""What a tokenize request may carry beside the card: metadata and a time to live.

IN PCI SCOPE. Metadata is stored in clear beside the token, so anything that looks like
a card number or sensitive authentication data is refused here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Final

from cofre.redaction import mask_pan_like
from vault.errors import InvalidMetadata, InvalidTTL
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
        if mask_pan_like(key) != key:
            raise InvalidMetadata(
                "a metadata key looks like a card number; metadata is not encrypted"
            )
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
            raise InvalidMetadata(
                f"metadata values must be strings of at most {MAX_METADATA_VALUE} characters"
            )
        refuse_sensitive_authentication_data(key, value)
        if mask_pan_like(value) != value:
            raise InvalidMetadata(
                f"metadata value {key!r} looks like a card number; metadata is not encrypted"
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
