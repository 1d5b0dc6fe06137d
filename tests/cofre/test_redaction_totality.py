"""The PAN detector (`cofre.redaction`) is total and linear: it runs on every log line,
audit entry, error detail and relay answer, and on caller input (metadata, names), so an
exception in it is a 500 or a hung request, and super-linear work is a denial of service
by anyone who can get text logged or echoed. Work is counted in Luhn checks, never timed."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cofre import redaction
from cofre.redaction import holds_pan_like, mask_pan_like, mask_pan_values

# Two loose windows that overlap: 4111111111+111111 is a card, and so is a window that
# starts inside it. Masking the first used to leave the second reading dry groups
# (StopIteration out of `_mask_chains`).
OVERLAPPING = "4111111111 111111 411111111 111111"


def test_overlapping_loose_windows_are_masked_without_error() -> None:
    masked = mask_pan_like(OVERLAPPING)
    assert "4111111111 111111" not in masked
    assert len(masked) == len(OVERLAPPING)
    assert holds_pan_like(OVERLAPPING)


def test_overlapping_list_pieces_never_unmask_a_hidden_digit() -> None:
    pieces = ["4111111111", "111111", "411111111", "111111"]
    masked = mask_pan_values(pieces)
    assert masked[:2] != pieces[:2]
    for before, after in zip(pieces, masked, strict=True):
        assert len(after) == len(before)
        assert all(a in {b, "*"} for a, b in zip(after, before, strict=True))


def test_a_superscript_separator_is_not_read_as_a_digit() -> None:
    # "²" is a digit to str.isdigit() but not a decimal digit: it must stay a separator.
    text = "4²1²1²1²1²1²1²1²1²1²1²1²1²1²1²1"
    assert len(mask_pan_like(text)) == len(text)


@pytest.mark.parametrize("repeats", [50, 100, 200])
def test_masking_work_is_linear_in_the_text(monkeypatch: pytest.MonkeyPatch, repeats: int) -> None:
    # The reviewer's case: 18 KB of 8+8 groups took 28 s when the search restarted from
    # the chain's first group after every masked window.
    # Review 28: the windows are checked on prefix sums (`_luhn_sums`), each digit summed
    # once; counted here with the Luhn checks of the old rule.
    calls = 0
    real = redaction.luhn_valid
    real_sums = redaction._luhn_sums

    def counting(digits: str) -> bool:
        nonlocal calls
        calls += 1
        return real(digits)

    def summing(digits: str) -> tuple[bytes, bytes]:
        nonlocal calls
        calls += len(digits)
        return real_sums(digits)

    monkeypatch.setattr(redaction, "luhn_valid", counting)
    monkeypatch.setattr(redaction, "_luhn_sums", summing)
    text = "41111111 11111111 " * repeats
    masked = redaction.mask_pan_like(text)
    assert calls <= 20 * len(text), (calls, len(text))
    assert "41111111 11111111" not in masked


# Text the detector must survive: digits (ASCII, other scripts, look-alikes that are not
# decimal), every separator the rules know, letters, and asterisks as masking leaves them.
_ALPHABET = st.sampled_from(
    list("0123456789" * 4)
    + list(' -.,/_\t"[]:*')
    + list("abcfxAF")
    + ["\u0664", "\u0661", "\uff11", "\uff14", "\u00b2", "\u2461", "\u0e51"]
)
_TEXT = st.text(_ALPHABET, max_size=120)


@settings(max_examples=400, deadline=None)
@given(_TEXT)
@example(OVERLAPPING)
@example(
    "4\u00b21\u00b21\u00b21\u00b21\u00b21\u00b21\u00b21\u00b21\u00b21\u00b21\u00b21\u00b21\u00b21"
)
def test_mask_pan_like_is_total_and_keeps_the_length(text: str) -> None:
    masked = mask_pan_like(text)
    assert len(masked) == len(text)
    # Masking only hides: each character is kept or becomes an asterisk.
    assert all(m in {t, "*"} for m, t in zip(masked, text, strict=True))
    again = mask_pan_like(masked)
    assert len(again) == len(masked)
    assert all(a in {m, "*"} for a, m in zip(again, masked, strict=True))
    # `holds_pan_like` refuses what it cannot check: call its detector itself.
    redaction._mask_text(text, strict=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_TEXT, st.integers(0, 10**20), st.floats()), max_size=12))
def test_mask_pan_values_is_total(items: list[object]) -> None:
    mask_pan_values(items)
    mask_pan_values({"k": items})


def test_a_detector_failure_withholds_the_text_and_refuses_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Defence in depth: what the API masks without choosing it (error details, log
    # lines) becomes a fixed placeholder, never the clear text and never an exception;
    # caller input that cannot be checked is refused.
    def broken(text: str, strict: bool) -> str:
        raise StopIteration

    monkeypatch.setattr(redaction, "_mask_text", broken)
    assert redaction.mask_pan_like_or_withhold("4111 1111 1111 1111") == redaction.WITHHELD
    assert redaction.mask_pan_values_or_withhold({"a": "4111 1111 1111 1111"}) == (
        redaction.WITHHELD
    )
    assert holds_pan_like("4111 1111 1111 1111")
    with pytest.raises(StopIteration):
        mask_pan_like("x")


@pytest.mark.parametrize("repeats", [100, 400])
def test_the_uuid_check_reads_a_bounded_span(monkeypatch: pytest.MonkeyPatch, repeats: int) -> None:
    # Review 10: every hyphenated match in a long run of hex digits and hyphens scanned
    # the whole run to see whether it was a UUID: 100 KB took 40 s of CPU. Counted in
    # `_UUID.fullmatch` spans, never timed.
    spans: list[int] = []
    real = redaction._UUID

    class Counting:
        def fullmatch(self, text: str, start: int, end: int) -> re.Match[str] | None:
            spans.append(end - start)
            return real.fullmatch(text, start, end)

    monkeypatch.setattr(redaction, "_UUID", Counting())
    text = "4111-1111-1111-1111-a-" * repeats
    masked = redaction.mask_pan_like(text)
    assert max(spans, default=0) <= 37
    assert "4111-1111-1111-1111" not in masked


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111\n1111 1111",
        "4111 1111\r\n      1111 1111",
        "4111     1111     1111     1111",
        "4111\u00a01111\u00a01111\u00a01111",
        "41111111,11111111",
        json.dumps([4111, 1111, 1111, 1111], indent=2),
        json.dumps(["41111111", "11111111"], indent=2),
    ],
)
def test_wrapped_aligned_and_pretty_printed_cards_are_masked(text: str) -> None:
    # Review 10: an acquirer's answer (the relay masks its raw text when it is not JSON)
    # may wrap a card across lines, align its groups, or pretty-print a list of pieces.
    masked = redaction.mask_pan_like(text)
    assert "1111" in masked  # the last four stay
    assert redaction.holds_pan_like(masked) is False
    assert "*" in masked


def test_an_integer_too_long_to_print_is_masked_not_an_error() -> None:
    # Review 10: str() of an int over 4,300 digits raises ValueError.
    huge = 10**5000
    assert mask_pan_values(huge) == "*" * 20
    assert mask_pan_values({huge: 1}) == {"*" * 20: 1}
    assert mask_pan_values([huge, 4111111111111111]) == ["*" * 20, "411111******1111"]
