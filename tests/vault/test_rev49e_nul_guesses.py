"""rev49e: the caller's code and expiry guesses written with a NUL between their
characters (``7\\u00003\\u00009``, UTF-16 text of ASCII as it is, no base64) still tell
which one is the card's.

The answer's texts are read without their NULs (`vault.relay.withhold_sent`, and the
escapes of `escapes_hold` after it), so the card's code echoed ``7\\x003\\x009`` comes
back ``[withheld]``; the caller's own texts are read for guesses as written
(`vault.relay.caller_guesses`: percent-decoded, ASCII digits, their decodings), where
the NULs split every guess into runs of one digit, none a guess. atk49b read decoded
bytes without their NULs for guesses, not the caller's texts as written. So the holder
of the adapter's certificate writes the 1,000 codes so, each in its own field the
acquirer echoes, in the one relay that sends the code: the one field withheld is the
card's code. JSON carries a NUL as ``\\u0000`` and the relay body takes any JSON.

What should hold: the answer is the same whatever the card's code and expiry are.

Run against the real HTTPS fake acquirer, the real SoftHSM token and SQLite.
"""

from __future__ import annotations

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


def _nuls(guess: str) -> str:
    return "\x00".join(guess)


def _withheld(service: VaultService, guesses: list[str], **card: str) -> list[str]:
    """The guesses whose field came back withheld (the others come back without their
    NULs: the answer is read so)."""
    token = _card(service, code=card.get("code", "739"), expiry=card.get("expiry", "11/31"))
    refs = {_field(i): _nuls(guess) for i, guess in enumerate(guesses)}
    answer = service.relay(GETNET, "getnet-authorize", {**_body(token), "refs": refs})
    assert isinstance(answer.body, dict)
    shown = answer.body["refs"]
    return [guess for i, guess in enumerate(guesses) if shown.get(_field(i)) == WITHHELD_DETAIL]


def test_code_guesses_with_nuls_do_not_tell_the_cards_code(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    acquirer.answer = _echo
    first = _withheld(relay, CODES, code="739")
    assert first != ["739"], "one relay told the caller the card's security code"
    assert first == _withheld(relay, CODES, code="215")


def test_expiry_guesses_with_nuls_do_not_tell_the_cards_expiry(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    acquirer.answer = _echo
    first = _withheld(relay, EXPIRIES, expiry="11/31")
    assert first != ["11/31"], "one relay told the caller the card's expiry"
    assert first == _withheld(relay, EXPIRIES, expiry="04/34")
