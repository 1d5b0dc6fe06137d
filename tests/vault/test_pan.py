"""`vault.pan`: what a PAN may look like, and that it never prints in clear."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cofre.errors import CofreError
from policies.formats import MIN_CANDIDATES
from vault.pan import (
    MAX_LENGTH,
    MIN_LENGTH,
    InvalidPan,
    Pan,
    luhn_check_digit,
    luhn_sum,
    luhn_valid,
)

VISA = "4111111111111111"


def test_repr_and_str_are_masked() -> None:
    pan = Pan(VISA)
    assert str(pan) == "411111******1111"
    assert repr(pan) == "Pan('411111******1111')"
    assert f"{pan}" == "411111******1111"
    assert f"{pan!r}" == "Pan('411111******1111')"
    assert VISA not in repr([pan, {"k": pan}])
    assert pan.reveal() == VISA


def test_masked_keeps_length() -> None:
    assert str(Pan("123456789012")) == "12******9012"
    assert str(Pan("6011000990139424123")) == "601100*********4123"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("601100000004", "60******0004"),
        ("4222222222222", "422******2222"),
        ("30569309025904", "3056******5904"),
        ("378282246310005", "37828******0005"),
        (VISA, "411111******1111"),
    ],
)
def test_a_short_card_is_masked_to_at_least_six_hidden_digits(text: str, masked: str) -> None:
    # BIN6 + last four on a 12-digit card left two hidden digits, one fixed by Luhn: ten
    # guesses for an out-of-scope reader of a masked reveal.
    assert Pan(text).masked() == masked


@given(st.integers(MIN_LENGTH, MAX_LENGTH))
def test_a_masked_pan_never_shows_more_than_bin6_and_last4_nor_hides_too_few(length: int) -> None:
    pan = Pan(("4" + "0" * 18)[:length])
    masked = pan.masked()
    shown_leading = len(masked) - len(masked.lstrip("0123456789"))
    assert len(masked) == length
    assert masked.endswith(pan.last4)
    assert shown_leading <= 6
    hidden = masked.count("*")
    assert hidden >= 6
    # One hidden digit is the Luhn digit: the rest are the candidates.
    assert 10 ** (hidden - 1) >= MIN_CANDIDATES


@pytest.mark.parametrize(
    "text",
    [
        "４１１１１１１１１１１１１１１１",  # full-width digits
        "٤١١١١١١١١١١١١١١١",  # Arabic-Indic digits
        "۴۱۱۱۱۱۱۱۱۱۱۱۱۱۱۱",  # Extended Arabic-Indic (Persian)
        " 4111111111111111",
        "4111111111111111 ",
        "4111-1111-1111-1111",
        "4111 1111 1111 1111",
        "+4111111111111111",
        "-4111111111111111",
        "41111111111",  # 11 digits
        "41111111111111111111",  # 20 digits
        "",
        "4111111111111111\n",
        "4111111111111111\x00",
        "411111111111111¹",
    ],
)
def test_rejects(text: str) -> None:
    with pytest.raises(InvalidPan) as info:
        Pan(text)
    # The message never repeats the input.
    assert "4111111" not in str(info.value)


@pytest.mark.parametrize("value", [None, 4111111111111111, b"4111111111111111", ["4111"], 4.1])
def test_rejects_non_strings(value: object) -> None:
    with pytest.raises(InvalidPan):
        Pan(value)
    with pytest.raises(InvalidPan):
        Pan.normalize(value)


def test_invalid_pan_is_cofre_and_value_error() -> None:
    assert issubclass(InvalidPan, CofreError)
    assert issubclass(InvalidPan, ValueError)
    assert InvalidPan.code == "invalid_pan"


def test_normalize_strips_spaces_and_dashes_only() -> None:
    assert Pan.normalize("4111-1111-1111-1111") == Pan(VISA)
    assert Pan.normalize(" 4111 1111 1111 1111 ") == Pan(VISA)
    with pytest.raises(InvalidPan):
        Pan.normalize("4111.1111.1111.1111")
    with pytest.raises(InvalidPan):
        Pan.normalize("４１１１-１１１１-１１１１-１１１１")


def test_accepts_boundaries() -> None:
    assert len(Pan("1" * 12)) == 12
    assert len(Pan("1" * 19)) == 19


def test_immutable_and_not_picklable() -> None:
    pan = Pan(VISA)
    with pytest.raises(AttributeError):
        pan._digits = "0"  # type: ignore[misc]
    with pytest.raises(TypeError):
        pickle.dumps(pan)


def test_equality_and_hash() -> None:
    assert Pan(VISA) == Pan(VISA)
    assert Pan(VISA) != Pan("4111111111111112")
    assert len({Pan(VISA), Pan(VISA)}) == 1
    assert Pan(VISA) != VISA


def _luhn_reference(digits: str) -> bool:
    """Independent formulation: the ISO/IEC 7812-1 table for doubled digits, left to right."""
    doubled = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9]
    parity = len(digits) % 2
    total = 0
    for index, char in enumerate(digits):
        digit = int(char)
        total += doubled[digit] if index % 2 == parity else digit
    return total % 10 == 0


@given(st.text(alphabet="0123456789", min_size=2, max_size=40))
def test_luhn_matches_reference(digits: str) -> None:
    assert luhn_valid(digits) == _luhn_reference(digits)


@given(st.text(alphabet="0123456789", min_size=1, max_size=40))
def test_luhn_sum_is_the_sum_of_the_doubled_and_plain_digits(digits: str) -> None:
    # The sum itself, not only its validity: token candidates are made from it.
    doubled = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9]
    reference = sum(
        doubled[int(char)] if position % 2 else int(char)
        for position, char in enumerate(reversed(digits))
    )
    assert luhn_sum(digits) == reference


def test_only_the_ten_ascii_digits_make_a_pan() -> None:
    # Every code point that is ASCII or that Python counts as a digit or a number: only
    # 0-9 pass (full-width, Arabic-Indic, superscript and other digits are refused).
    for code in range(0x110000):
        char = chr(code)
        if not (code < 128 or char.isdigit() or char.isnumeric()):
            continue
        text = "411111111111111" + char
        if char in "0123456789":
            assert Pan(text).reveal() == text
            continue
        with pytest.raises(InvalidPan):
            Pan(text)
        assert not luhn_valid("41111111111111" + char + "1")


@given(st.text(alphabet="0123456789", min_size=1, max_size=30))
def test_check_digit_makes_valid(payload: str) -> None:
    digit = luhn_check_digit(payload)
    assert luhn_valid(payload + digit)
    assert sum(luhn_valid(payload + d) for d in "0123456789") == 1


@given(st.text(max_size=25))
def test_luhn_never_raises_on_garbage(text: str) -> None:
    result = luhn_valid(text)
    if result:
        assert text.isascii()
        assert text.isdigit()


def test_known_luhn_values() -> None:
    assert luhn_valid(VISA)
    assert luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")
    assert not luhn_valid("")
    assert not luhn_valid("0")
