"""Review 36: the relay withheld the card details it sent (the security code, the
expiry) from an upstream's answer only where they matched, so the answer told a caller
which of its own guesses matched. An adapter outside PCI scope writes every code
(``000`` to ``999``, and ``0000`` to ``9999`` for a four-digit one) and every month of
ten years into a field the acquirer echoes (a note, an order reference; acquirers echo
the whole request in their errors); the one guess that comes back ``[withheld]`` is
the card's. The code is sent once, in that relay: one relay was enough. Now the
caller's own guesses are withheld whether or not they match, so the answer is the same
whatever the card's code and expiry are."""

from __future__ import annotations

from typing import Any

from tests.support.fake_acquirer import FakeAcquirer
from tests.vault.test_relay_card import GETNET, _body, _card, relay
from vault.service import VaultService

__all__ = ["relay"]  # the fixture, imported for the tests here

# Each behind a letter: in a row, the PAN detector masks them as one long number.
CODES = " ".join(f"c{n:03d}" for n in range(1000))
EXPIRIES = [f"{month:02d}/{year}" for year in range(30, 36) for month in range(1, 13)]


def _relay_guessing(service: VaultService, code: str, expiry: str) -> dict[str, Any]:
    token = _card(service, code=code, expiry=expiry)
    body = _body(token)
    body["note"] = CODES
    body["references"] = EXPIRIES
    answer = service.relay(GETNET, "getnet-authorize", body)
    assert isinstance(answer.body, dict)
    return answer.body


def _echo(body: dict[str, Any]) -> tuple[int, Any]:
    """A decline quoting the request's free fields (the card object left out)."""
    return 400, {"error": "invalid request", "note": body["note"], "refs": body["references"]}


def test_the_answer_does_not_tell_which_guessed_code_is_the_cards(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    acquirer.answer = _echo
    first = _relay_guessing(relay, "739", "11/31")
    second = _relay_guessing(relay, "215", "11/31")
    shown = zip(CODES.split(), first["note"].split(), strict=True)
    withheld = [guess for guess, as_shown in shown if as_shown != guess]
    assert withheld != ["c739"], "one relay told the caller the card's code"
    assert first["note"] == second["note"]


def test_the_answer_does_not_tell_which_guessed_expiry_is_the_cards(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    acquirer.answer = _echo
    first = _relay_guessing(relay, "739", "11/31")
    second = _relay_guessing(relay, "739", "04/34")
    withheld = [g for g, shown in zip(EXPIRIES, first["refs"], strict=True) if shown != g]
    assert withheld != ["11/31"], "one relay told the caller the card's expiry"
    assert first["refs"] == second["refs"]


def test_an_echo_of_the_code_itself_is_still_withheld(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    """What held: the acquirer's own echo of the code it got (no guess of the caller's)
    is withheld as before, and so are its echoes of the expiry."""
    token = _card(relay, code="7391", expiry="11/31")
    acquirer.answer = lambda body: (
        402,
        {"reason": f"cvv {body['card']['security_code']} mismatch", "expiry": "11/31"},
    )
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    assert answer.body == {"reason": "cvv [withheld] mismatch", "expiry": "[withheld]"}


def test_guesses_padded_with_zeros_do_not_tell_the_cards_code(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    """Review 36b: a sent code is withheld wherever a whole digit run reads it with
    leading zeros (``00739``), but only the caller's runs of three or four digits were
    its guesses, so 1,000 guesses written with two zeros in front came back withheld
    only where they were the card's."""
    acquirer.answer = _echo
    padded = " ".join(f"c00{n:03d}" for n in range(1000))

    def note(code: str) -> str:
        token = _card(relay, code=code, expiry="11/31")
        body = _body(token)
        body["note"] = padded
        body["references"] = []
        answer = relay.relay(GETNET, "getnet-authorize", body)
        assert isinstance(answer.body, dict)
        return str(answer.body["note"])

    first = note("739")
    withheld = [g for g, shown in zip(padded.split(), first.split(), strict=True) if shown != g]
    assert withheld != ["c00739"], "one relay told the caller the card's code"
    assert first == note("215")
