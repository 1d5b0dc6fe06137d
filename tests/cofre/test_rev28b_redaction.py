"""Review 28b (attacker): the linear PAN detector (`_luhn_sums`, review 28) against the
one it replaced, on shapes a generic Hypothesis strategy rarely draws: other scripts'
digits, 19- and 20-digit windows, separators at a window's edges, leading zeros, long
runs of short groups. The old `_luhn_window` and `_card_windows` (as of 5e6ef7a, kept
verbatim in `test_redaction_linear`) are the reference; every public entry point must
answer the same with either."""

from __future__ import annotations

import hashlib

import pytest

from cofre import redaction
from cofre.redaction import (
    MIN_DIGITS,
    holds_pan_like,
    luhn_valid,
    mask_pan_like,
    metadata_holds_pan_like,
)
from tests.cofre.test_redaction_linear import old_card_windows as _old_card_windows
from tests.cofre.test_redaction_linear import old_luhn_window as _old_luhn_window


class _Stream:
    """Fixed pseudo-random test inputs (the same every run; `random` is banned here)."""

    def __init__(self, seed: int) -> None:
        self._seed, self._counter, self._pool = seed, 0, b""

    def _byte(self) -> int:
        if not self._pool:
            self._counter += 1
            self._pool = hashlib.sha256(f"{self._seed}:{self._counter}".encode()).digest()
        value, self._pool = self._pool[0], self._pool[1:]
        return value

    def randint(self, low: int, high: int) -> int:
        return low + (self._byte() * 256 + self._byte()) % (high - low + 1)

    def choice(self, options: str | list[str]) -> str:
        return options[self.randint(0, len(options) - 1)]


def _with_luhn(body: str) -> str:
    """`body` and the digit that makes it pass Luhn."""
    for check in "0123456789":
        if luhn_valid(body + check):
            return body + check
    raise AssertionError(body)


_ARABIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
_FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


def _shapes() -> list[str]:
    rng = _Stream(28)
    shapes: list[str] = []
    for length in (12, 13, 15, 16, 18, 19):
        card = _with_luhn("4" + "".join(rng.choice("0123456789") for _ in range(length - 2)))
        shapes += [
            card,
            "0" + card,  # a leading zero before the window
            card + "7",  # 20 digits holding a 19-digit window
            "9" + card + "9",
            card.translate(_ARABIC),
            card.translate(_FULLWIDTH),
            " ".join(card[i : i + 4] for i in range(0, len(card), 4)),
            "-".join(card),
            ", ".join(card),
            '["' + '","'.join(card[i : i + 3] for i in range(0, len(card), 3)) + '"]',
            "x " + card[:6] + "\n" + card[6:] + " y",
            card[:1] + " " + card[1:],  # a separator right after the first digit
            card[:-1] + " " + card[-1:],  # and before the last
            "0" + card[:5] + " " + card[5:],  # a group led by a zero
            card[:8] + "\u00a0" + card[8:].translate(_ARABIC),  # mixed scripts
            "2026-12-01 " + card,
            card + " 2026-12-01",
        ]
    # Long runs of short groups, with and without cards among them.
    for _ in range(40):
        groups = [
            "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 7)))
            for _ in range(rng.randint(3, 40))
        ]
        sep = rng.choice([" ", "-", ", ", "\t", "  ", " - "])
        shapes.append(sep.join(groups))
        shapes.append(sep.join(groups).translate(_ARABIC))
    shapes.append("- 92,9" * 60)
    shapes.append("1" * 400)
    shapes.append(" ".join(["0"] * 200))
    return shapes


@pytest.mark.parametrize("text", _shapes())
def test_the_linear_detector_answers_as_the_old_one(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Holds: mask, strict check and metadata check are unchanged on these shapes."""
    new = (mask_pan_like(text), holds_pan_like(text), metadata_holds_pan_like(text))
    with monkeypatch.context() as patched:
        patched.setattr(redaction, "_luhn_window", _old_luhn_window)
        patched.setattr(redaction, "_card_windows", _old_card_windows)
        old = (mask_pan_like(text), holds_pan_like(text), metadata_holds_pan_like(text))
    assert new == old


@pytest.mark.parametrize("length", range(MIN_DIGITS, 40))
def test_every_window_length_and_place_is_found(length: int) -> None:
    """Holds: `_luhn_window` equals the old double loop on every window length and
    offset in fixed pseudo-random runs of 12 to 39 digits, for both minimums."""
    rng = _Stream(length)
    for _ in range(30):
        digits = "".join(rng.choice("0123456789") for _ in range(length))
        assert redaction._luhn_window(digits) is _old_luhn_window(digits), digits
        assert redaction._luhn_window(digits, 13) is _old_luhn_window(digits, 13), digits
