"""Representations of a card number that the one PAN
detector (`cofre.redaction`) does not see. The same detector guards metadata stored in
clear, the relay's answers to out-of-scope adapters, request ids, logs and audit details,
so each miss here is a miss everywhere."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cofre.redaction import (
    holds_pan_like,
    mask_pan_like,
    mask_pan_values,
    metadata_holds_pan_like,
)

PAN = "4111111111111111"

MISSED_TEXT = {
    "two 8-digit groups": "41111111 11111111",
    "10 + 6 digits": "4111111111-111111",
    "mixed separators": "4111 1111-1111 1111",
    "four-space separator": "4111    1111    1111    1111",
    "two-space and one-space": "4111  1111 1111  1111",
    "glued in a 32-character hex word": "a" + PAN + "bcdef0123456789",
    "glued in a 64-character hex word": "f" * 10 + PAN + "e" * 38,
    "Arabic-Indic digits": "".join(chr(0x660 + int(d)) for d in PAN),
    "fullwidth digits": "".join(chr(0xFF10 + int(d)) for d in PAN),
}


def _digits(text: str) -> str:
    # Any Unicode decimal digit counts: int() and NFKC both read these as 0-9.
    return "".join(str(int(c)) for c in text if c.isdecimal())


@pytest.mark.parametrize("text", MISSED_TEXT.values(), ids=MISSED_TEXT.keys())
def test_mask_pan_like_sees_the_card(text: str) -> None:
    leaked = PAN in _digits(mask_pan_like(text))  # no PAN in the failure message
    assert not leaked


@pytest.mark.parametrize(
    "answer",
    [
        {"a": ["41111111", "11111111"]},
        {"a": [41111111, 11111111]},
        {"a": "41111111 11111111"},
    ],
    ids=["list of two 8-digit strings", "list of two 8-digit ints", "8+8"],
)
def test_mask_pan_values_sees_the_card(answer: object) -> None:
    leaked = PAN in _digits(repr(mask_pan_values(answer)))
    assert not leaked


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("41111111 11111111", "411111** ****1111"),
        ("4111 1111-1111 1111", "4111 11**-**** 1111"),
        ('["41111111","11111111"]', '["411111**","****1111"]'),
        ("order 12 4111111111-111111 ok", "order 12 411111****-**1111 ok"),
    ],
)
def test_loose_shapes_keep_bin6_and_last4(text: str, expected: str) -> None:
    assert mask_pan_like(text) == expected


def test_unicode_digits_are_masked_in_their_own_script() -> None:
    arabic = "".join(chr(0x660 + int(d)) for d in PAN)
    assert mask_pan_like(arabic) == arabic[:6] + "*" * 6 + arabic[-4:]


NOISE = [
    "2026-12-01 03:15:30,123 INFO request id=abc",
    "2026-12-01T03:15:30.123456Z 2026-12-31T23:59:59Z",
    "from 2026-12-01 - 2026-12-31 count 1234",
    "peer 192.168.100.200:8443 via 10.0.0.1",
    "version 1.22.333 build 20261201",
    "elapsed 1234 ms, 5678 ms, 9012 ms",
    "took 12.345678 s p99 987.654321 ms",
]


@pytest.mark.parametrize("text", NOISE)
def test_log_noise_is_kept(text: str) -> None:
    assert mask_pan_like(text) == text


@given(st.uuids())
def test_uuids_are_kept(value: uuid.UUID) -> None:
    # Masked only where the last group is a run of 12 digits.
    text = f"request {value} done"
    assume(not str(value)[-12:].isdigit())
    assert mask_pan_like(text) == text


@given(st.datetimes(min_value=datetime(1000, 1, 1)), st.integers(0, 999))
def test_iso_timestamps_are_kept(moment: datetime, millis: int) -> None:
    text = f"{moment.isoformat(sep=' ')} {moment:%Y-%m-%d %H:%M:%S},{millis:03d} INFO x"
    assert mask_pan_like(text) == text


@given(st.tuples(*[st.integers(0, 255)] * 4), st.integers(1, 65535))
def test_ipv4_addresses_are_kept(octets: tuple[int, ...], port: int) -> None:
    text = "peer " + ".".join(map(str, octets)) + f":{port} ok"
    assert mask_pan_like(text) == text


@pytest.mark.parametrize("text", [*MISSED_TEXT.values(), "411.111.111.116", PAN])
def test_caller_input_gets_no_exemption(text: str) -> None:
    assert holds_pan_like(text)


# Shapes the loose rules do not join (a dot among mixed separators, a bare comma, a JSON
# list's text mixing quoted and bare pieces). Metadata is stored in clear and answered to
# every reader of the token, so its check reads every digit chain with no letter in it.
METADATA_SHAPES = {
    "mixed with a dot": "4111 1111.1111-1111",
    "bare comma": "41111111,11111111",
    "commas and a space": "4111,1111,1111 1111",
    "JSON text, quoted and bare": '["4111", 1111, "1111", 1111]',
    "card inside a longer chain": "12 34111111 11111111 11 5",
    "Arabic-Indic with dots": ".".join(
        "".join(chr(0x660 + int(d)) for d in PAN[i : i + 4]) for i in range(0, 16, 4)
    ),
    "dot between halves": "41111111.11111111",
}


@pytest.mark.parametrize("text", METADATA_SHAPES.values(), ids=METADATA_SHAPES.keys())
def test_the_metadata_check_sees_the_card(text: str) -> None:
    assert metadata_holds_pan_like(text)


@pytest.mark.parametrize(
    "text",
    ["cvv 123", "order 20261201 shipped", "room 101, floor 3", "v1.2.3", "2026-12-01T10:30:00Z"],
)
def test_the_metadata_check_keeps_short_chains(text: str) -> None:
    assert not metadata_holds_pan_like(text)
