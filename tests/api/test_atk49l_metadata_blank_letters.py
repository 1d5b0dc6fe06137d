"""atk49l: the Hangul fillers (U+115F, U+1160, U+3164, U+FFA0) are letters (category Lo)
that print as blank space. `metadata_holds_pan_like` breaks a digit chain at a letter,
so ``41111111ㅤ11111111`` (two halves of a card, a filler between them), which every
reader sees as ``41111111 11111111``, was stored in clear metadata and answered to every
reader of the token; so were four groups joined by two different fillers. A letter that
shows nothing is no letter between digits."""

from __future__ import annotations

import pytest

from cofre.redaction import metadata_holds_pan_like
from tests.api.conftest import VaultServer
from tests.support.pans import card_number

FILLERS = {"u3164": "\u3164", "u115f": "\u115f", "u1160": "\u1160", "uffa0": "\uffa0"}
SHAPES = {
    **{f"8-8-{name}": f"41111111{f}11111111" for name, f in FILLERS.items()},
    "4x4-two-fillers": "4111\u31641111\u115f1111\u31641111",
}


@pytest.mark.parametrize("value", SHAPES.values(), ids=SHAPES.keys())
def test_the_detector_reads_through_blank_letters(value: str) -> None:
    assert metadata_holds_pan_like(value)


@pytest.mark.parametrize(
    ("serial", "value"), list(enumerate(SHAPES.values())), ids=list(SHAPES.keys())
)
def test_a_card_split_by_blank_letters_is_refused_as_metadata(
    vault_server: VaultServer, serial: int, value: str
) -> None:
    card = {"pan": card_number("555555", 491_000 + serial), "format": "pan_last4"}
    with vault_server.client("payments") as client:
        response = client.post("/v1/tokenize", json={**card, "metadata": {"note": value}})
    assert response.status_code == 422, (response.status_code, response.text[:300])
    assert response.json()["code"] == "invalid_metadata"


def test_hangul_text_with_numbers_is_kept() -> None:
    assert not metadata_holds_pan_like("주문 12345 배송 67890")
