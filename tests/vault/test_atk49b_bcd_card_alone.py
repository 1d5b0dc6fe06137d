"""atk49b: the card echoed as its ISO 8583 field alone (packed BCD) in a short base64 or
base32 word went back to the adapter whole.

Session 42 (orc42) taught the relay to read decoded bytes as a binary ISO 8583 message
writes digits (packed BCD for the card, two digits a byte), and session 38 to read a
short base64 or base32 word (the card encoded alone, padded or as a text's whole value,
up to 20 characters). The two were never put together: a short word is decoded and read
as Latin-1 text only (`vault._relay_echo._rare_words` yields it with ``raw=False``, and
`_read_bytes` reads a word's bytes as BCD only when ``raw``). A JSON front of an ISO
8583 host that echoes the card's field 2 as the bytes it wrote, base64-encoded (8 bytes
for a 16-digit card, 12 characters; 9 with its length byte), hands the holder of the
adapter's certificate (outside PCI scope) the whole card number: it decodes the word
and reads the hex.

What should hold: the answer carries no reading of the card the relay sent; the field
comes back ``[withheld]``, as the card in base64 alone does
(tests/vault/test_relay38_echo_encodings.py) and as the whole message in base64 does
(tests/vault/test_orc42_relay_binary_echo.py).

Run against the real HTTPS fake acquirer, the real SoftHSM token and SQLite.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from tests.support.fake_acquirer import FakeAcquirer
from tests.vault.test_relay_card import GETNET, PAN, PAYMENTS, relay
from vault.pan import Pan
from vault.relay import WITHHELD_DETAIL
from vault.service import TokenizeRequest, VaultService

__all__ = ["relay"]  # the fixture, imported for the tests here

pytestmark = [
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True),
]

# A 14-digit Diners Club test card beside the 16-digit Mastercard.
DINERS = "36006666333344"


def _bcd(card: str) -> bytes:
    """Field 2 as a binary ISO 8583 message writes it: two digits a byte, an odd
    length padded with F."""
    return bytes.fromhex(card + ("F" if len(card) % 2 else ""))


def _length_byte(card: str) -> bytes:
    return bytes.fromhex(f"{len(card):02d}")  # LLVAR's length, itself BCD


ENCODINGS: dict[str, Callable[[str], str]] = {
    "bcd in base64": lambda c: base64.b64encode(_bcd(c)).decode(),
    "bcd in base64url, no padding": lambda c: (
        base64.urlsafe_b64encode(_bcd(c)).decode().rstrip("=")
    ),
    "length and bcd in base64": lambda c: base64.b64encode(_length_byte(c) + _bcd(c)).decode(),
    "bcd in base32": lambda c: base64.b32encode(_bcd(c)).decode(),
    # Inside a text, unpadded: too short for a word of its own (18 characters).
    "bcd in base64url in a query string": lambda c: (
        "pan=" + base64.urlsafe_b64encode(_bcd(c)).decode().rstrip("=") + "&x=1"
    ),
    "length and bcd in base64 among words": lambda c: (
        "de2 " + base64.b64encode(_length_byte(c) + _bcd(c)).decode().rstrip("=") + " end"
    ),
}


@pytest.mark.parametrize("card", [PAN, DINERS])
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_the_card_field_in_bcd_encoded_alone_is_withheld(
    relay: VaultService, acquirer: FakeAcquirer, encoding: str, card: str
) -> None:
    encode = ENCODINGS[encoding]
    token = relay.tokenize(PAYMENTS, TokenizeRequest(Pan(card), "pan_bin6_last4")).token
    acquirer.answer = lambda got: (
        402,
        {"status": "DECLINED", "de002": encode(got["card"]["number"])},
    )
    answer = relay.relay(GETNET, "plain", {"card": {"number": token}})
    assert acquirer.received[-1]["card"]["number"] == card
    assert isinstance(answer.body, dict)
    shown = str(answer.body["de002"])
    # What the adapter reads out of what it was given: the card, whole.
    if shown != WITHHELD_DETAIL:
        assert encode(card) == shown
    assert answer.body == {"status": "DECLINED", "de002": WITHHELD_DETAIL}, (
        f"the card {card} went back to the adapter as {shown!r}"
    )
