"""Sensitive authentication data (PCI DSS 3.3.1) never lands in metadata, which is
stored in clear: card security codes, PIN blocks and track data are refused by the
key's name and by the value's shape; ordinary metadata still passes."""

from __future__ import annotations

import pytest

from vault.errors import InvalidMetadata, SensitiveAuthenticationData
from vault.service import validate_metadata

# Track data built on a test card number that is NOT Luhn-valid, so only the track
# shape (not the PAN detector) can catch it.
TRACK2 = "4000000000000001=29121010000012300000"
TRACK1 = "%B4000000000000001^DOE/JOHN^2912101000001230000?"


@pytest.mark.parametrize(
    ("metadata", "kind"),
    [
        ({"cvv": "123"}, "card security code"),
        ({"CVV2": "123"}, "card security code"),
        ({"card_cvc": "1234"}, "card security code"),
        ({"cardSecurityCode": "123"}, "card security code"),
        ({"csc": "123"}, "card security code"),
        ({"cav2": "123"}, "card security code"),
        ({"pin": "1234"}, "PIN"),
        ({"pin_block": "0412AC89ABCDEF01"}, "PIN"),
        ({"PINBlock": "0412AC89ABCDEF01"}, "PIN"),
        ({"track2": "x"}, "track data"),
        ({"track_data": "x"}, "track data"),
        ({"magstripe": "x"}, "track data"),
        ({"note": TRACK2}, "track data"),
        ({"note": ";" + TRACK2 + "?"}, "track data"),
        ({"note": TRACK1}, "track data"),
        ({"note": "cvv: 123"}, "card security code"),
        ({"note": "CVC2=0123"}, "card security code"),
        ({"note": "pin 1234"}, "PIN"),
        ({"blob": "241234FFFFFFFFFF"}, "PIN"),  # ISO 9564 format 2 PIN block, in clear
        ({"blob": "041234FFFFFFFFFF"}, "PIN"),  # format 0 before the PAN XOR
    ],
)
def test_sensitive_authentication_data_is_refused(metadata: dict[str, str], kind: str) -> None:
    with pytest.raises(SensitiveAuthenticationData, match=kind) as caught:
        validate_metadata(metadata)
    assert isinstance(caught.value, InvalidMetadata)  # still a 422 metadata error
    assert caught.value.code == "sensitive_authentication_data"
    for value in metadata.values():
        if len(value) > 1:
            assert value not in str(caught.value)  # never echoed


@pytest.mark.parametrize(
    "metadata",
    [
        {"order": "A-1", "shipping": "express", "spin": "left"},
        {"pinned": "yes"},  # 'pin' only as a whole word
        {"tracking": "1Z999AA10123456784"},
        {"trace": "4bf92f3577b34da6"},  # a 16-hex trace id
        {"amount": "123", "count": "1234"},
        {"note": "opinion 1234"},
        {"description": "backtrack 12"},
    ],
)
def test_ordinary_metadata_passes(metadata: dict[str, str]) -> None:
    validate_metadata(metadata)
