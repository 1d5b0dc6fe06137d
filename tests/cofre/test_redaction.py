"""The one PAN detector: every representation an outside review got through it."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cofre.redaction import OwnDigest, mask_pan_like, mask_pan_values

PAN = "4111111111111111"
MASKED = "411111******1111"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (PAN, MASKED),
        ("card 4111 1111 1111 1111 ok", "card 4111 11** **** 1111 ok"),
        ("4111-1111-1111-1111", "4111-11**-****-1111"),
        ("4111.1111.1111.1111", "4111.11**.****.1111"),
        ("4111111111111111.0", MASKED + ".0"),
        ("[4,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]", "[4,1,1,1,1,1,*,*,*,*,*,*,1,1,1,1]"),
        ('["4","1","1","1","1","1","1","1","1","1","1","1","1","1","1","1"]', None),
        ("4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1", "4 1 1 1 1 1 * * * * * * 1 1 1 1"),
        ("41111111111111111111111", "*" * 23),
        # Glued to hex that is not a digest's length, a card is still a card.
        ("deadbeef" * 4 + PAN, "deadbeef" * 4 + MASKED),
        ("dead" + PAN + "beef" * 7, "dead" + MASKED + "beef" * 7),
        ("0" * 48 + PAN, "*" * 64),
    ],
)
def test_text_representations_are_masked(text: str, expected: str | None) -> None:
    masked = mask_pan_like(text)
    assert "".join(c for c in masked if c.isdigit()) != "".join(c for c in text if c.isdigit())
    assert masked != text
    if expected is not None:
        assert masked == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-01 03:15:30,123 INFO request",
        "2026-12-01T03:15:30.123456Z",
        "127.0.0.1:8443",
        "tree size 12345678901 of 99",
        "version 1.2.3",
        "12345678901",
    ],
)
def test_ordinary_text_is_kept(text: str) -> None:
    assert mask_pan_like(text) == text


@given(st.binary(), st.sampled_from([hashlib.md5, hashlib.sha1, hashlib.sha256, hashlib.sha512]))
def test_digests_are_kept(data: bytes, digest: Callable[[bytes], Any]) -> None:
    # One SHA-256 in five holds 12 digits in a row; a node logs its policy's hash at
    # start and an operator compares it with sha256sum (seen masked in a clean-clone run).
    # A digest is kept unless a digit run in it holds a Luhn-valid 13-19 digit window
    # (about one in fifty): a card glued into a digest-sized hex word is still masked.
    hexdigest = digest(data).hexdigest()
    if any(_has_card(run) for run in re.findall(r"[0-9]{13,}", hexdigest)):
        assert mask_pan_like(hexdigest) != hexdigest
        return
    assert mask_pan_like(f"policy_sha256={hexdigest} ok") == f"policy_sha256={hexdigest} ok"
    assert mask_pan_like(hexdigest.upper()) == hexdigest.upper()


# The policy hash of a clean-clone run (stop after 9a73316): "...7174832147970651782..."
# holds a Luhn-valid window, and the `starting` line showed it masked.
_UNLUCKY_POLICY_HASH = "6729a94eab2051d6ed2a6ce3c7174832147970651782f7b875aa56b6bfbb2bf4"


def test_a_digest_the_vault_computed_is_logged_whole() -> None:
    assert mask_pan_like(_UNLUCKY_POLICY_HASH) != _UNLUCKY_POLICY_HASH
    event = {"policy_sha256": OwnDigest(_UNLUCKY_POLICY_HASH)}
    assert mask_pan_values(event) == {"policy_sha256": _UNLUCKY_POLICY_HASH}


@pytest.mark.parametrize(
    "value",
    [
        "4111111111111111",
        "4" * 64,
        "6729A94EAB2051D6ED2A6CE3C7174832147970651782F7B875AA56B6BFBB2BF4",
        "abc4111111111111111",
    ],
)
def test_no_card_number_fits_in_an_own_digest(value: str) -> None:
    """All digits, upper case or not a digest's length: refused, so wrapping cannot
    show a card number."""
    with pytest.raises(TypeError):
        OwnDigest(value)


def _luhn(digits: str) -> bool:
    doubled = [int(d) * (2 if i % 2 else 1) for i, d in enumerate(reversed(digits))]
    return sum(d - 9 if d > 9 else d for d in doubled) % 10 == 0


def _has_card(run: str) -> bool:
    return any(
        _luhn(run[start : start + length])
        for length in range(13, min(19, len(run)) + 1)
        for start in range(len(run) - length + 1)
    )


def test_a_digest_with_many_digits_is_kept() -> None:
    digest = "9b893988458154aba4b" + "0123456789abcdef" * 2 + "fdfa35832946c"
    assert len(digest) == 64
    assert mask_pan_like(digest) == digest


def test_json_values_in_every_representation() -> None:
    answer = {
        "as_string": PAN,
        "dotted": "4111.1111.1111.1111",
        "as_int": int(PAN),
        "as_float": json.loads("4111111111111111.0"),
        "exponent": json.loads("4.111111111111111e15"),
        "digit_array": [int(d) for d in PAN],
        "digit_strings": list(PAN),
        "groups": ["4111", "1111", "1111", "1111"],
        "amounts": [1990, 2, 3],
        "nested": [{"x": [int(d) for d in PAN]}],
        "status": 200,
        "ratio": 0.5,
    }
    masked = mask_pan_values(answer)
    assert masked["as_string"] == MASKED
    assert masked["dotted"] == "4111.11**.****.1111"
    assert masked["as_int"] == MASKED
    assert masked["as_float"] == MASKED
    assert masked["exponent"] == MASKED
    assert "".join(masked["digit_array"]) == MASKED
    assert "".join(masked["digit_strings"]) == MASKED
    assert "".join(masked["groups"]) == MASKED
    assert masked["amounts"] == [1990, 2, 3]
    assert "".join(masked["nested"][0]["x"]) == MASKED
    assert masked["status"] == 200
    assert masked["ratio"] == 0.5
    assert PAN not in json.dumps(masked)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("601100000004", "60******0004"),
        ("card 4222222222222 ok", "card 422******2222 ok"),
        ("378282246310005", "37828******0005"),
        (PAN, MASKED),
    ],
)
def test_a_short_card_in_text_hides_six_digits_as_a_masked_pan_does(
    text: str, expected: str
) -> None:
    # A relay answer or a log line shows a short card no better than a masked reveal
    # (`Pan.masked`): BIN6 + last four of a 12-digit card left ten guesses.
    assert mask_pan_like(text) == expected
    assert mask_pan_values({"pan": text})["pan"] == expected
