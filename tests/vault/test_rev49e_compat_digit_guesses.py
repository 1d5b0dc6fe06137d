"""rev49e: the caller's code and expiry guesses written in digits NFKC folds to ASCII
(superscripts ``⁷³⁹``, circled ``⑦③⑨``) still tell which one is the card's.

The answer's texts past ASCII are read with their compatibility characters folded
(`vault._relay_details.escapes_hold`: NFKC, session 41), so the card's code echoed
``⁷³⁹`` comes back ``[withheld]``. The caller's own texts are read for guesses in
ASCII digits (`ascii_digits`: decimal digits only, which superscripts and circled
digits are not) and folded only once an escape of theirs is undone
(`vault.relay.caller_guesses`): a guess written ``⁷³⁹`` is no run of digits, no
guess. So the holder of the adapter's certificate writes the 1,000 codes so, each in
its own field the acquirer echoes, in the one relay that sends the code: the one field
withheld is the card's code; the same for the expiries.

What should hold: the answer is the same whatever the card's code and expiry are.

Run against the real HTTPS fake acquirer, the real SoftHSM token and SQLite.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.fake_acquirer import FakeAcquirer
from tests.vault.test_atk49b_encoded_guesses import CODES, EXPIRIES, _echo, _field
from tests.vault.test_relay_card import GETNET, _body, _card, relay
from vault.relay import WITHHELD_DETAIL
from vault.service import VaultService

__all__ = ["relay"]  # the fixture, imported for the tests here

pytestmark = [
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True),
]

DIGITS: dict[str, Callable[[str], str]] = {
    "superscript": lambda s: s.translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")),
    "circled": lambda s: s.translate(str.maketrans("0123456789", "⓪①②③④⑤⑥⑦⑧⑨")),
}


def _withheld(
    service: VaultService, guesses: list[str], encode: Callable[[str], str], **card: str
) -> list[str]:
    token = _card(service, code=card.get("code", "739"), expiry=card.get("expiry", "11/31"))
    refs = {_field(i): encode(guess) for i, guess in enumerate(guesses)}
    answer = service.relay(GETNET, "getnet-authorize", {**_body(token), "refs": refs})
    assert isinstance(answer.body, dict)
    shown = answer.body["refs"]
    return [guess for i, guess in enumerate(guesses) if shown.get(_field(i)) == WITHHELD_DETAIL]


@pytest.mark.parametrize("digits", sorted(DIGITS))
def test_code_guesses_in_compatibility_digits_do_not_tell_the_cards_code(
    relay: VaultService, acquirer: FakeAcquirer, digits: str
) -> None:
    acquirer.answer = _echo
    first = _withheld(relay, CODES, DIGITS[digits], code="739")
    assert first != ["739"], "one relay told the caller the card's security code"
    assert first == _withheld(relay, CODES, DIGITS[digits], code="215")


@pytest.mark.parametrize("digits", sorted(DIGITS))
def test_expiry_guesses_in_compatibility_digits_do_not_tell_the_cards_expiry(
    relay: VaultService, acquirer: FakeAcquirer, digits: str
) -> None:
    acquirer.answer = _echo
    first = _withheld(relay, EXPIRIES, DIGITS[digits], expiry="11/31")
    assert first != ["11/31"], "one relay told the caller the card's expiry"
    assert first == _withheld(relay, EXPIRIES, DIGITS[digits], expiry="04/34")
