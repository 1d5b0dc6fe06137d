"""atk49b: the caller's guesses at the security code and the expiry, written already
encoded, told which one was the card's.

Review 36 made the relay withhold the caller's own guesses (every run of three or four
digits of its body, every expiry-like text) wherever it withholds the card's code or
expiry, so that 1,000 codes written into a field the acquirer echoes come back the same
whatever the card's code is. But the guesses are read from the caller's body as
written, percent-decoded and in ASCII digits only (`vault.relay.caller_guesses`), while
the card's code and expiry are looked for in the answer in many more shapes: HTML
entities, base64 words, quoted-printable, UTF-7 (`escapes_hold`, `withhold_encoded_pans`,
session 38). So the holder of the adapter's certificate (outside PCI scope) writes each
guess into its own field, already encoded (``&#55;&#51;&#57;`` or ``NzM5``), in the one
relay that sends the code; the acquirer echoes the fields as it got them (acquirers echo
the request in their errors); the only field that comes back ``[withheld]`` is the one
that encodes the card's code (or expiry). One relay, the card's security code.

What should hold: the answer is the same whatever the card's code and expiry are, as it
is for guesses written in plain digits (tests/vault/test_rev36_relay_guesses.py).

Run against the real HTTPS fake acquirer, the real SoftHSM token and SQLite.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.fake_acquirer import FakeAcquirer
from tests.vault.test_relay_card import GETNET, _body, _card, relay
from vault.service import VaultService

__all__ = ["relay"]  # the fixture, imported for the tests here

pytestmark = [
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True),
]

# How the caller writes each guess; the acquirer echoes it as it is.
ENCODINGS: dict[str, Callable[[str], str]] = {
    "html entities": lambda s: "".join(f"&#{ord(c)};" for c in s),
    "base64": lambda s: base64.b64encode(s.encode()).decode(),
    "quoted-printable": lambda s: "".join(f"={ord(c):02X}" for c in s),
    "utf-7": lambda s: "+" + base64.b64encode(s.encode("utf-16-be")).decode().rstrip("=") + "-",
    # Decoded bytes are read without their NULs (UTF-16 text of ASCII).
    "utf-16 in base64": lambda s: base64.b64encode(f"cvv={s}".encode("utf-16-le")).decode(),
}

CODES = [f"{n:03d}" for n in range(1000)]
EXPIRIES = [f"{month:02d}/{year}" for year in range(30, 36) for month in range(1, 13)]


def _field(index: int) -> str:
    """A member name without digits (digits in a key are guesses of their own)."""
    return "g" + "".join("abcdefghij"[int(c)] for c in f"{index:03d}")


def _echo(body: dict[str, Any]) -> tuple[int, Any]:
    """A decline quoting the request's free fields (the card object left out)."""
    return 400, {"error": "invalid request", "refs": body["refs"]}


def _withheld(
    service: VaultService, guesses: list[str], encode: Callable[[str], str], **card: str
) -> list[str]:
    token = _card(service, code=card.get("code", "739"), expiry=card.get("expiry", "11/31"))
    refs = {_field(i): encode(guess) for i, guess in enumerate(guesses)}
    answer = service.relay(GETNET, "getnet-authorize", {**_body(token), "refs": refs})
    assert isinstance(answer.body, dict)
    shown = answer.body["refs"]
    return [guess for i, guess in enumerate(guesses) if shown.get(_field(i)) != refs[_field(i)]]


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_encoded_code_guesses_do_not_tell_the_cards_code(
    relay: VaultService, acquirer: FakeAcquirer, encoding: str
) -> None:
    acquirer.answer = _echo
    first = _withheld(relay, CODES, ENCODINGS[encoding], code="739")
    assert first != ["739"], "one relay told the caller the card's security code"
    assert first == _withheld(relay, CODES, ENCODINGS[encoding], code="215")


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_encoded_expiry_guesses_do_not_tell_the_cards_expiry(
    relay: VaultService, acquirer: FakeAcquirer, encoding: str
) -> None:
    acquirer.answer = _echo
    first = _withheld(relay, EXPIRIES, ENCODINGS[encoding], expiry="11/31")
    assert first != ["11/31"], "one relay told the caller the card's expiry"
    assert first == _withheld(relay, EXPIRIES, ENCODINGS[encoding], expiry="04/34")


def test_code_guesses_as_byte_lists_do_not_tell_the_cards_code(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    """The same with each guess written as a JSON array of its bytes in decimal (padded
    to the 13 bytes an array is read from, `vault._relay_dumps.joined_lists`): the
    answer reads an array's items joined, the caller's guesses were not read so, and
    the one array withheld whole was the card's code."""
    acquirer.answer = _echo

    def as_bytes(guess: str) -> list[int]:
        return list(f"xx={guess};padding".encode())

    def answer(code: str) -> dict[str, Any]:
        token = _card(relay, code=code, expiry="11/31")
        refs = {_field(i): as_bytes(guess) for i, guess in enumerate(CODES)}
        body = {**_body(token), "refs": refs}
        shown = relay.relay(GETNET, "getnet-authorize", body).body
        assert isinstance(shown, dict)
        return dict(shown["refs"])

    first, second = answer("739"), answer("215")
    told = [guess for i, guess in enumerate(CODES) if first[_field(i)] != second[_field(i)]]
    assert told == [], f"the answers differ only at {told}: the card's code is among them"
