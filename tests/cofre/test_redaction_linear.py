"""The PAN detector's Luhn windows are found in linear time (review 28, R28-4), and with
exactly the answers of the rule it replaced.

Before: `_luhn_window` ran one pure-Python Luhn check per 12 to 19 digit window and
`_card_windows` one per run of groups of that length, so a 256-character metadata value
of short digit groups (``"- 92,9"`` repeated) cost ~1,300 Luhn checks, 3-5 ms a value on
the event loop, and a 60 KiB relay answer echoing it 0.3 s. Now both read prefix sums
(`_luhn_sums`): O(1) a window. The old implementations are kept here as the reference,
and the work is counted, never timed (the house rule)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cofre import redaction

# --- The reference: the rule as it was before review 28, kept verbatim ---------------


def old_luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def old_luhn_window(digits: str, minimum: int = redaction.MIN_DIGITS) -> bool:
    for length in range(minimum, min(redaction.MAX_DIGITS, len(digits)) + 1):
        for start in range(len(digits) - length + 1):
            if old_luhn_valid(digits[start : start + length]):
                return True
    return False


def old_card_windows(groups: list[str]) -> list[tuple[int, int]]:
    windows: list[tuple[int, int]] = []
    first = 0
    while first < len(groups):
        digits = ""
        found = None
        for last in range(first, len(groups)):
            digits += groups[last]
            if len(digits) > redaction.MAX_DIGITS:
                break
            if len(digits) >= redaction.MIN_DIGITS and digits[0] != "0" and old_luhn_valid(digits):
                found = last + 1
                break
        if found is None:
            first += 1
        else:
            windows.append((first, found))
            first = found
    return windows


# --- Same answers ----------------------------------------------------------------------

SLOW_VALUE = ("- 92,9" * 60)[:256]
_DIGITS = st.text("0123456789", max_size=60)


@settings(max_examples=500, deadline=None)
@given(_DIGITS, st.sampled_from([redaction.MIN_DIGITS, 13]))
@example("4111111111111111", 12)
@example("4111111111111111", 13)
@example("0" * 12, 12)
@example("9" * 40, 13)
@example("".join(c for c in SLOW_VALUE if c.isdigit()), 12)
def test_the_luhn_window_answers_as_the_old_rule(digits: str, minimum: int) -> None:
    assert redaction._luhn_window(digits, minimum) == old_luhn_window(digits, minimum)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.text("0123456789", max_size=12), max_size=30))
@example(["4111111111", "111111", "411111111", "111111"])
@example(["41111111", "11111111"] * 5)
@example(["0411", "1111", "1111", "1111", "1"])
@example(["92", "9"] * 40)
@example(["", "4111111111111111", ""])
def test_the_card_windows_are_those_of_the_old_rule(groups: list[str]) -> None:
    # Empty groups never reach it (the callers' groups are regex runs and list items
    # with a digit), and are compared all the same.
    assert redaction._card_windows(groups) == old_card_windows(groups)


def test_the_luhn_sums_agree_with_luhn_on_every_window() -> None:
    digits = "4111111111111111" + "5555555555554444" + "378282246310005" + "0123456789"
    sums = redaction._luhn_sums(digits)
    for start in range(len(digits) + 1):
        for end in range(start, len(digits) + 1):
            row = sums[end % 2]
            assert (row[end] == row[start]) == old_luhn_valid(digits[start:end])


def old_rule(call: Callable[[], Any]) -> Any:
    """Run `call` with the module's Luhn windows as they were before review 28."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(redaction, "_luhn_window", old_luhn_window)
        patch.setattr(redaction, "_card_windows", old_card_windows)
        return call()


# Digits (ASCII and others), every separator the rules know, letters and hex.
_ALPHABET = st.sampled_from(
    list("0123456789" * 6)
    + list(' ,-.\t\n"[]:/_')
    + [", ", '","', " - ", "\u00a0", "\u0664", "\uff11"]
    + list("abcxF")
)
_TEXT = st.lists(_ALPHABET, max_size=90).map("".join)


@settings(max_examples=400, deadline=None)
@given(_TEXT)
@example(SLOW_VALUE)
@example("4111 1111-1111 1111")
@example('["41111111","11111111"]')
@example("4111111111 111111 411111111 111111")
@example("2026-12-01 41111111 11111111")
@example("a" + "4111111111111111" + "bcdef0123456789")
def test_the_detector_answers_as_with_the_old_rule(text: str) -> None:
    assert redaction.mask_pan_like(text) == old_rule(lambda: redaction.mask_pan_like(text))
    assert redaction.holds_pan_like(text) == old_rule(lambda: redaction.holds_pan_like(text))
    assert redaction.metadata_holds_pan_like(text) == old_rule(
        lambda: redaction.metadata_holds_pan_like(text)
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.text("0123456789", min_size=1, max_size=11), st.integers(0, 10**11)),
        max_size=12,
    )
)
@example(["41111111", "11111111"])
@example([4111111111, 111111, 411111111, 111111])
def test_list_pieces_are_masked_as_with_the_old_rule(items: list[object]) -> None:
    assert redaction.mask_pan_values(items) == old_rule(lambda: redaction.mask_pan_values(items))


# --- Linear work, counted --------------------------------------------------------------


class _Counting(bytes):
    """Prefix sums that count how often they are read (one look at a window)."""

    reads = 0

    def __getitem__(self, key: Any) -> Any:
        _Counting.reads += 1
        return super().__getitem__(key)


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """The detector's Luhn work so far: the digits a Luhn check or a prefix sum reads,
    plus each read of the prefix sums (one per window looked at). Before review 28 the
    work was all in `luhn_valid`; `_luhn_sums` did not exist (patched in unused)."""
    digits_read = 0
    _Counting.reads = 0
    real_valid = redaction.luhn_valid
    real_sums = getattr(redaction, "_luhn_sums", None)

    def valid(digits: str) -> bool:
        nonlocal digits_read
        digits_read += len(digits)
        return real_valid(digits)

    def sums(digits: str) -> tuple[bytes, bytes]:
        nonlocal digits_read
        digits_read += len(digits)
        assert real_sums is not None
        even, odd = real_sums(digits)
        return _Counting(even), _Counting(odd)

    monkeypatch.setattr(redaction, "luhn_valid", valid)
    monkeypatch.setattr(redaction, "_luhn_sums", sums, raising=False)
    return lambda: digits_read + _Counting.reads


# A value of digit groups of one or two joined by the loose separators: no Luhn-valid
# window (accepted as metadata), but every chain long.
SHAPED = {
    "the review's metadata value": SLOW_VALUE,
    "another of its kind": ("- 18,3" * 60)[:256],
    "singles": ("5-5 5," * 60)[:256],
    "singles and pairs": ("3 33,-" * 60)[:256],
}


@pytest.mark.parametrize("text", SHAPED.values(), ids=SHAPED.keys())
def test_the_metadata_check_does_linear_work(work: Callable[[], int], text: str) -> None:
    assert not redaction.metadata_holds_pan_like(text)
    assert work() <= 12 * len(text), (work(), len(text))


@pytest.mark.parametrize("text", SHAPED.values(), ids=SHAPED.keys())
def test_masking_an_echoed_answer_does_linear_work(work: Callable[[], int], text: str) -> None:
    echoed = (text * 240)[:60_000]
    masked = redaction.mask_pan_values({"echo": echoed, "note": [echoed]})
    # (Where two copies of the value meet, a window may pass Luhn and be masked.)
    assert len(masked["echo"]) == len(masked["note"][0]) == len(echoed)
    assert work() <= 12 * 2 * len(echoed), (work(), len(echoed))


def test_cards_in_a_long_text_are_masked_with_linear_work(work: Callable[[], int]) -> None:
    text = "41111111 11111111 - 92,9 " * 400
    masked = redaction.mask_pan_like(text)
    assert "41111111 11111111" not in masked
    assert work() <= 12 * len(text), (work(), len(text))
