"""Session 41: echoes the relay's answer scan did not read (session 40's list): the card
in Spanish, French or German digit words, with ``double``/``triple`` or in pairs
(``forty-one eleven``); the security
code in digit words of any of these languages (read word by word, ``seven three nine``
was ``7 3 9``, no code); the cardholder's name in fullwidth letters.

The holder of a stolen adapter certificate (outside PCI scope: it knows the card's BIN
and last four) relays to an acquirer that answers so, or to a hostile upstream shaping
its answer for it. Against the real HTTPS fake acquirer, with the real SoftHSM token and
database; the genuine answers' side is tests/vault/test_relay41_false_positives.py
(the corpus's 3,300 answers, unchanged by these readings) and the pins below.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.fake_acquirer import FakeAcquirer
from tests.support.pans import card_number
from tests.vault.test_relay_card import GETNET, PAYMENTS, _body, relay
from vault.card import SecurityCode
from vault.pan import Pan
from vault.relay import WITHHELD_DETAIL
from vault.service import TokenizeRequest, VaultService

# The answer scan reads the relay's answer bytes: the store and the HSM backend change
# nothing it sees, so this module runs on one cell of the fixtures' matrix (SQLite and
# SoftHSM2; session 47, ~4x faster). tests/vault/test_relay_card.py and test_relay.py
# run the relay itself against both stores and both backends.
pytestmark = [
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True),
]

__all__ = ["relay"]  # the fixture, imported for the tests here

CODE = "7391"
NAME = "Ana Souza"
# A card with repeated digits among its hidden ones, for "double" and "triple".
PAN = card_number("455555", 555)

_WORDS = {
    "Spanish": ("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"),
    "French": ("zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"),
    "German": ("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"),
    "English": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "Portuguese": ("zero", "um", "dois", "três", "quatro", "cinco", "seis", "sete", "oito", "nove"),
}


def _card(service: VaultService, code: str = CODE) -> str:
    request = TokenizeRequest(
        Pan(PAN),
        "pan_bin6_last4",
        expiry="11/31",
        cardholder_name=NAME,
        security_code=SecurityCode(code),
    )
    return service.tokenize(PAYMENTS, request).token


def _spoken(digits: str, words: tuple[str, ...]) -> str:
    return " ".join(words[int(d)] for d in digits)


def _doubled(digits: str) -> str:
    """`digits` read aloud as a British English speaker reads a number: a digit twice is
    ``double``, three times ``triple``."""
    spoken, at = [], 0
    while at < len(digits):
        same = len(digits[at:]) - len(digits[at:].lstrip(digits[at]))
        take = min(same, 3)
        spoken.append(
            {1: "", 2: "double ", 3: "triple "}[take] + _WORDS["English"][int(digits[at])]
        )
        at += take
    return ", ".join(spoken)


_TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen")
_TEENS += ("eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def _in_pairs(digits: str) -> str:
    """`digits` read aloud two at a time, as English speakers read a card or a code:
    ``forty-one``, ``eleven``, ``twenty``, ``zero five``."""
    english = _WORDS["English"]
    spoken = []
    for at in range(0, len(digits), 2):
        pair = digits[at : at + 2]
        if len(pair) == 1 or pair[0] == "0":
            spoken.append(_spoken(pair, english))
        elif pair[0] == "1":
            spoken.append(_TEENS[int(pair[1])])
        else:
            unit = "" if pair[1] == "0" else f"-{english[int(pair[1])]}"
            spoken.append(_TENS[int(pair[0])] + unit)
    return " ".join(spoken)


CARD_ECHOES = {
    **{f"{language} words": (lambda pan, w=w: _spoken(pan, w)) for language, w in _WORDS.items()},
    "Spanish words, comma-separated, capitalised": lambda pan: ", ".join(
        _WORDS["Spanish"][int(d)].title() for d in pan
    ),
    "German words, hyphens": lambda pan: "-".join(_WORDS["German"][int(d)] for d in pan),
    "double and triple": _doubled,
    "English pairs": _in_pairs,
}


@pytest.mark.parametrize("echo", sorted(CARD_ECHOES))
def test_the_card_in_other_digit_words_is_withheld(
    relay: VaultService, acquirer: FakeAcquirer, echo: str
) -> None:
    """High (7 of 10 failed before per back end: Spanish, French, German, their
    variants, ``double``/``triple``, English read in pairs, ``forty-one eleven``). The
    acquirer's answer reads the card aloud; the adapter reads its hidden digits back."""
    token = _card(relay)
    acquirer.answer = lambda got: (402, {"echo": CARD_ECHOES[echo](got["card"]["number"])})
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    assert acquirer.received[-1]["card"]["number"] == PAN
    assert answer.body == {"echo": WITHHELD_DETAIL}


@pytest.mark.parametrize("language", [*sorted(_WORDS), "English pairs"])
def test_the_code_in_digit_words_is_withheld(
    relay: VaultService, acquirer: FakeAcquirer, language: str
) -> None:
    """High (6 failed before per back end: every language, English and Portuguese
    included, and English in pairs, ``seventy-three ninety-one``; each word was read
    alone, ``7 3 9 1``, and a code is a run). A decline
    that quotes the code it got, in words."""
    token = _card(relay)
    spoken = _in_pairs(CODE) if language == "English pairs" else _spoken(CODE, _WORDS[language])
    acquirer.answer = lambda got: (402, {"message": f"CVV {spoken} inválido", "status": "DENIED"})
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    assert acquirer.received[-1]["card"]["security_code"] == CODE
    assert answer.body == {"message": WITHHELD_DETAIL, "status": "DENIED"}


def test_the_name_in_fullwidth_letters_is_withheld(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    """Low (1 failed before per back end). A Japanese acquirer's answer writes the
    holder's name in fullwidth letters (zenkaku)."""
    token = _card(relay)
    wide = "".join(chr(ord(c) + 0xFEE0) if c != " " else "\u3000" for c in NAME.upper())
    acquirer.answer = lambda got: (200, {"holder": wide, "status": "APPROVED"})
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    assert answer.body == {"holder": WITHHELD_DETAIL, "status": "APPROVED"}


GENUINE: dict[str, Any] = {
    "address": "Rua dos Andradas, 1000, Porto Alegre",
    "schedule": "Sept 5, un paiement sur deux",
    "result": "null",
    "note": "Zahlung eins von zwei: acht Tage",
    "message": "Transaction one of two approved",
}


@pytest.mark.parametrize("code", ["002", "000", "007", "012"])
def test_lone_words_of_other_languages_are_not_read(
    relay: VaultService, acquirer: FakeAcquirer, code: str
) -> None:
    """The readings' false positives (``002`` failed before per back end: the English
    ``two`` alone in the message was read as the code's value). A Spanish, French or
    German digit word alone is an everyday word of another language (``dos``, ``Sept``,
    ``null``); a code is looked for in digit words only as a run (``zero zero two``,
    ``eins von zwei`` is none): a word alone read as its digit withheld every such text
    of a relay whose code was ``002``, ``007`` or ``000``."""
    token = _card(relay, code)
    acquirer.answer = lambda got: (200, GENUINE)
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    assert answer.body == GENUINE, json.dumps(answer.body)
