"""atk49l: a card number written in compatibility digits (superscripts, circled digits,
dingbat digits: Unicode "digit" characters that are not decimal, category No) was stored
in clear metadata and answered to every reader of the token. `metadata_holds_pan_like`
splits digit chains at "letters" (`[^\\W\\d_]`), and these characters are word
characters that are not `\\d`: each one counted as a letter, so the chain of the card's
digits was never read. NFKC folds them to ASCII digits (the cardholder name's check
already reads them so, `vault.card`), and a person or a downstream system reads them as
the card: ``⁴¹¹¹¹¹¹¹¹¹¹¹¹¹¹¹`` is 4111111111111111."""

from __future__ import annotations

import pytest

from cofre.redaction import metadata_holds_pan_like
from tests.api.conftest import VaultServer
from tests.support.pans import card_number

PAN = "4111111111111111"

_SUPERSCRIPT = "⁰¹²³⁴⁵⁶⁷⁸⁹"
SHAPES = {
    "superscript": "".join(_SUPERSCRIPT[int(d)] for d in PAN),
    "subscript": "".join(chr(0x2080 + int(d)) for d in PAN),
    "circled": "".join("⓪①②③④⑤⑥⑦⑧⑨"[int(d)] for d in PAN),
    "dingbat": "".join(chr(0x2780 + int(d) - 1) if d != "0" else "🄋" for d in PAN),
    "superscript-grouped": " ".join(
        "".join(_SUPERSCRIPT[int(d)] for d in PAN[i : i + 4]) for i in range(0, 16, 4)
    ),
    "mixed-with-ascii": "4111" + "".join(_SUPERSCRIPT[int(d)] for d in PAN[4:]),
    # Numbers of two digits in one character, which NFKC spells in ASCII digits.
    "circled-eleven": "4" + "\u246a" * 7 + "1",
    "parenthesized-eleven": "4" + "\u247e" * 7 + "1",
    "full-stop-eleven": "4" + "\u2492" * 7 + "1",
}


@pytest.mark.parametrize("value", SHAPES.values(), ids=SHAPES.keys())
def test_the_detector_reads_compatibility_digits_in_metadata(value: str) -> None:
    assert metadata_holds_pan_like(value)


@pytest.mark.parametrize(
    ("serial", "value"), list(enumerate(SHAPES.values())), ids=list(SHAPES.keys())
)
def test_a_card_in_compatibility_digits_is_refused_as_metadata(
    vault_server: VaultServer, serial: int, value: str
) -> None:
    # A card of its own per case: a convergent tokenize answers the first one's metadata.
    card = {"pan": card_number("555555", 490_000 + serial), "format": "pan_last4"}
    with vault_server.client("payments") as client:
        response = client.post("/v1/tokenize", json={**card, "metadata": {"note": value}})
    assert response.status_code == 422, (response.status_code, response.text[:300])
    assert response.json()["code"] == "invalid_metadata"


def test_innocent_metadata_with_compatibility_characters_is_kept() -> None:
    # A unit, a footnote mark, a short count: not 12 digits.
    for value in ("m²", "area 120 m² ¹", "step ① of ③", "H₂O"):
        assert not metadata_holds_pan_like(value)


def test_the_stored_value_is_not_answered(vault_server: VaultServer) -> None:
    # What the leak is: stored, then read back in clear by any reader of the domain.
    value = SHAPES["superscript"]
    card = {"pan": card_number("555555", 424242), "format": "pan_last4"}
    with vault_server.client("payments") as client:
        response = client.post("/v1/tokenize", json={**card, "metadata": {"note": value}})
        if response.status_code == 200:
            token = response.json()["token"]
            read = client.get(f"/v1/tokens/{token}")
            assert value not in read.text, "the card in superscript digits was answered"
        else:
            assert response.status_code == 422
