"""Session 42 (orc42): an acquirer speaking ISO 8583 echoes the request it built, in
base64, in a debug field of its JSON answer: the card as its binary message carries it,
packed BCD (two digits a byte, field 2 of a binary message) or EBCDIC (one byte a digit,
0xF0 to 0xF9, the mainframe hosts' character set). The adapter holding a stolen
certificate outside PCI scope reads the card's hidden digits back. Real HTTPS fake
acquirer, the real SoftHSM token and database.
"""

from __future__ import annotations

import base64

import pytest

from tests.support.fake_acquirer import FakeAcquirer
from tests.support.pans import card_number
from tests.vault.test_relay_card import GETNET, PAYMENTS, _body, relay
from vault.card import SecurityCode
from vault.pan import Pan
from vault.relay import WITHHELD_DETAIL
from vault.service import TokenizeRequest, VaultService

__all__ = ["relay"]  # the fixture, imported for the tests here

PAN = card_number("455555", 4242)
CODE = "7391"
NAME = "Ana Souza"
# An ISO 8583 header and MTI (0100) and the bitmap's first bytes, before the card.
HEAD = bytes.fromhex("600001000001000100") + bytes.fromhex("7234054128C28805")


def _bcd(digits: str) -> bytes:
    """Field 2 as a binary message packs it: its length, then two digits a byte (an odd
    count padded with a leading zero)."""
    padded = digits if len(digits) % 2 == 0 else "0" + digits
    return bytes([len(digits)]) + bytes.fromhex(padded)


def _ebcdic(digits: str) -> bytes:
    """Field 2 in EBCDIC (cp037): its length in two digits, then one byte a digit."""
    return f"{len(digits):02d}{digits}".encode("cp037")


SHAPES = {
    "packed BCD": lambda pan: HEAD + _bcd(pan) + b"\x00\x00\x00\x10\x00",
    "EBCDIC": lambda pan: HEAD + _ebcdic(pan) + "000000001000".encode("cp037"),
}


def _card(service: VaultService) -> str:
    return service.tokenize(PAYMENTS, TokenizeRequest(Pan(PAN), "pan_bin6_last4")).token


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_card_in_a_binary_iso8583_echo_is_withheld(
    relay: VaultService, acquirer: FakeAcquirer, shape: str
) -> None:
    token = _card(relay)

    def answer(got: dict[str, object]) -> tuple[int, dict[str, str]]:
        card = got["card"]
        assert isinstance(card, dict)
        raw = SHAPES[shape](str(card["number"]))
        return 402, {"status": "DENIED", "iso_request": base64.b64encode(raw).decode()}

    acquirer.answer = answer
    answered = relay.relay(GETNET, "getnet-authorize", _body(token))
    assert acquirer.received[-1]["card"]["number"] == PAN
    assert answered.body == {"status": "DENIED", "iso_request": WITHHELD_DETAIL}


@pytest.mark.parametrize("detail", ["security code", "cardholder name"])
def test_a_detail_in_an_ebcdic_echo_is_withheld(
    relay: VaultService, acquirer: FakeAcquirer, detail: str
) -> None:
    """The same acquirer's echo of the card object without its number (session 38's
    shape) in EBCDIC: the code (field 48's CVV2) or the holder's name."""
    request = TokenizeRequest(
        Pan(PAN),
        "pan_bin6_last4",
        expiry="11/31",
        cardholder_name=NAME,
        security_code=SecurityCode(CODE),
    )
    token = relay.tokenize(PAYMENTS, request).token

    def answer(got: dict[str, object]) -> tuple[int, dict[str, str]]:
        card = got["card"]
        assert isinstance(card, dict)
        echoed = card["security_code"] if detail == "security code" else card["cardholder_name"]
        raw = HEAD + f"CVV2 {echoed} ".encode("cp037") + b"\x00\x10"
        return 402, {"status": "DENIED", "iso_request": base64.b64encode(raw).decode()}

    acquirer.answer = answer
    answered = relay.relay(GETNET, "getnet-authorize", _body(token))
    assert acquirer.received[-1]["card"]["security_code"] == CODE
    assert answered.body == {"status": "DENIED", "iso_request": WITHHELD_DETAIL}
