"""What links two tokens of one card, from outside (session 36's format review).

An FF1 token is computed, so two formats that compute from the same input are related
by construction. Two FF1 formats of one shape that differ only in their Luhn setting
walked FF1 from the same start under the same tweak: the ``fail`` token was the ``pass``
token with its last free digit moved, so whoever held both (an out-of-scope system given
each for another use) saw that they were the same card, which random formats and
separate domains never show. The Luhn setting is now in the tweak.
"""

from __future__ import annotations

import pytest

from policies.formats import FormatSpec, FormatType, LuhnMode
from vault.errors import InvalidPan
from vault.fpe.ff1 import FF1
from vault.pan import Pan, luhn_check_digit
from vault.tokens import FpeTokenizer

KEY = bytes(range(32))  # a fixed key: the test is deterministic, never flaky
DOMAIN = "spiffe://cofre/payments"


def _cards(count: int, length: int = 16) -> list[Pan]:
    """`count` Luhn-valid cards of one BIN and last four, their middles spread out."""
    cards = []
    for index in range(count):
        middle = f"{(index * 7_919_317) % 10 ** (length - 10):0{length - 10}d}"
        body = "411111" + middle + "111"
        cards.append(Pan(body + luhn_check_digit(body)))
    return cards


def _spec(luhn: LuhnMode) -> FormatSpec:
    return FormatSpec(type=FormatType.FPE, luhn=luhn, pan_lengths=(16, 19))


def _differing_digits(a: str, b: str) -> int:
    return sum(x != y for x, y in zip(a, b, strict=True))


def test_pass_and_fail_ff1_tokens_of_one_card_are_unrelated() -> None:
    """Independent tokens of 6 free digits differ in one digit only about 5 times in
    100,000; before the fix every card's two tokens did."""
    tokenizer = FpeTokenizer(FF1(KEY))
    cards = _cards(200) + _cards(50, length=19)
    linked = [
        card
        for card in cards
        if _differing_digits(
            tokenizer.encrypt(_spec(LuhnMode.PASS), card, domain=DOMAIN),
            tokenizer.encrypt(_spec(LuhnMode.FAIL), card, domain=DOMAIN),
        )
        <= 1
    ]
    assert linked == []


def test_each_luhn_setting_decrypts_only_its_own_tokens() -> None:
    """The tweak binds the setting: a ``pass`` token read as a ``fail`` one is not its
    card (before the fix it was: the ``fail`` decryption puts back the passing digit it
    already has, then walks back from it), and a ``fail`` token is no ``pass`` token."""
    tokenizer = FpeTokenizer(FF1(KEY))
    passing, failing = _spec(LuhnMode.PASS), _spec(LuhnMode.FAIL)
    for card in _cards(20):
        token = tokenizer.encrypt(passing, card, domain=DOMAIN)
        assert tokenizer.decrypt(passing, token, domain=DOMAIN) == card
        assert tokenizer.decrypt(failing, token, domain=DOMAIN) != card
        token = tokenizer.encrypt(failing, card, domain=DOMAIN)
        assert tokenizer.decrypt(failing, token, domain=DOMAIN) == card
        with pytest.raises(InvalidPan):
            tokenizer.decrypt(passing, token, domain=DOMAIN)
