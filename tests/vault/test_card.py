"""Card details on their own: expiry, cardholder name, security code, sealed bundles.

The attacks come first: a name that smuggles a card number or a code, an oversized
name, an expired or implausible expiry, a code that is not 3-4 ASCII digits."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vault.card import (
    MAX_NAME_LENGTH,
    CardBundle,
    SecurityCode,
    normalize_cardholder_name,
    normalize_expiry,
    pan_digits,
)
from vault.errors import (
    CardExpired,
    IntegrityError,
    InvalidCardholderName,
    InvalidExpiry,
    InvalidSecurityCode,
)
from vault.models import TokenizeRequest
from vault.pan import Pan

NOW = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
VISA = Pan("4111111111111111")


# ------------------------------------------------------------------ attacks
@pytest.mark.parametrize(
    "name",
    [
        "JOHN 4111111111111111",
        "JOHN 4111 1111 1111 1111",
        "JOHN 4111-1111-1111-1111",
        "JOHN " + "\uff14" + "\uff11" * 15,  # full-width digits
        "JOHN \u0664\u0661\u0661",  # Arabic-Indic digits
        "JOHN SMITH 123",  # a security code riding in the name
        "cvv: 123",
        "JOHN%B4111111111111111^SMITH",
    ],
)
def test_a_name_carrying_digits_is_refused(name: str) -> None:
    with pytest.raises(InvalidCardholderName) as caught:
        normalize_cardholder_name(name)
    assert "4111" not in str(caught.value)
    assert "123" not in str(caught.value)


@pytest.mark.parametrize("size", [MAX_NAME_LENGTH + 1, 10_000, 1_000_000])
def test_an_oversized_name_is_refused(size: int) -> None:
    with pytest.raises(InvalidCardholderName, match="at most 64"):
        normalize_cardholder_name("A" * size)


@pytest.mark.parametrize("name", ["JOHN\x00SMITH", "JOHN\u200bSMITH", "JOHN\u202eSMITH", "A\ud800"])
def test_control_and_format_characters_are_refused(name: str) -> None:
    with pytest.raises(InvalidCardholderName):
        normalize_cardholder_name(name)


@pytest.mark.parametrize("name", [None, 42, b"JOHN"])
def test_a_name_that_is_not_text_is_refused(name: object) -> None:
    with pytest.raises(InvalidCardholderName):
        normalize_cardholder_name(name)


@pytest.mark.parametrize(
    ("text", "now"),
    [
        ("11/26", datetime(2026, 12, 1, 12, 0, tzinfo=UTC)),  # ended even in UTC-12
        ("2026-11", datetime(2026, 12, 1, 12, 0, tzinfo=UTC)),
        ("01/20", NOW),
        ("2000-01", NOW),
    ],
)
def test_an_expired_card_is_refused(text: str, now: datetime) -> None:
    with pytest.raises(CardExpired) as caught:
        normalize_expiry(text, now)
    assert caught.value.code == "card_expired"
    assert isinstance(caught.value, InvalidExpiry)


MALFORMED_EXPIRIES = ["13/27", "00/27", "1/27", "12/2027", "2027-13", "2027-1", "27-12", ""]
MALFORMED_EXPIRIES += [" 12/27", "\uff11\uff12/27", "12/27\n", "2047-01", "x" * 10_000]


@pytest.mark.parametrize("text", MALFORMED_EXPIRIES)
def test_a_malformed_or_implausible_expiry_is_refused(text: str) -> None:
    with pytest.raises(InvalidExpiry) as caught:
        normalize_expiry(text, NOW)
    assert not isinstance(caught.value, CardExpired)
    assert caught.value.code == "invalid_expiry"


@pytest.mark.parametrize("text", ["9999-12", "9999-01", "9998-12", "0000-01", "0000-12"])
def test_a_year_no_calendar_holds_is_an_invalid_expiry(text: str) -> None:
    # The month after 9999-12 is past what a datetime holds, and so is year 0: both were
    # a ValueError (a 500) before the range was checked.
    with pytest.raises(InvalidExpiry) as caught:
        normalize_expiry(text, NOW)
    assert caught.value.code in {"invalid_expiry", "card_expired"}
    assert text not in str(caught.value)


@given(
    year=st.integers(0, 9999),
    month=st.integers(1, 12),
    now=st.datetimes(datetime(2000, 1, 1), datetime(9990, 12, 31), timezones=st.just(UTC)),
)
def test_every_four_digit_year_and_month_is_an_answer_or_an_expiry_problem(
    year: int, month: int, now: datetime
) -> None:
    # Every ISO shape the pattern lets through, against any clock: normalised, or one of
    # the two expiry problems, never another exception.
    text = f"{year:04d}-{month:02d}"
    try:
        assert normalize_expiry(text, now) == text
    except InvalidExpiry:
        return
    assert now.year - 1 <= year <= now.year + 20


BAD_CODES: list[object] = ["12", "12345", "12a", "", " 123", "\uff11\uff12\uff13", 123, None]


@pytest.mark.parametrize("code", [*BAD_CODES, "\u0661\u0662\u0663"])
def test_a_malformed_security_code_is_refused(code: object) -> None:
    with pytest.raises(InvalidSecurityCode) as caught:
        SecurityCode(code)
    assert caught.value.code == "invalid_security_code"


def test_a_security_code_cannot_be_printed_or_pickled() -> None:
    code = SecurityCode("737")
    request = TokenizeRequest(
        VISA, "pan_bin6_last4", expiry="03/29", cardholder_name="ZOE DOE", security_code=code
    )
    for text in (str(code), repr(code), f"{code}", f"{code!r}", repr(request), str(request)):
        assert "737" not in text
        assert "ZOE" not in text
        assert "4111111111111111" not in text
    with pytest.raises(TypeError):
        pickle.dumps(code)
    with pytest.raises(AttributeError):
        code._digits = "000"


def test_a_bundle_repr_shows_neither_name_nor_number() -> None:
    bundle = CardBundle(VISA, "2029-03", "ZOE DOE")
    assert "ZOE" not in repr(bundle)
    assert "4111111111111111" not in repr(bundle)


@pytest.mark.parametrize(
    "clear",
    [b"{", b'{"v":2,"pan":"4111111111111111"}', b'{"v":1}', b"[]", b'{"v":1,"pan":"41"}', b"\xff"],
)
def test_a_stored_layout_this_vault_does_not_know_is_an_integrity_error(clear: bytes) -> None:
    with pytest.raises((IntegrityError, ValueError)):
        CardBundle.open(clear)


# ------------------------------------------------------------------ normal forms
@pytest.mark.parametrize(
    ("text", "expected"),
    [("03/29", "2029-03"), ("2029-03", "2029-03"), ("12/26", "2026-12"), ("11/26", "2026-11")],
)
def test_expiry_is_normalised_to_iso_year_month(text: str, expected: str) -> None:
    # 11/26 on 1 December 06:00 UTC: it is still 30 November in UTC-12.
    assert normalize_expiry(text, NOW) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  Zoe   DOE ", "Zoe DOE"),
        ("Zoe\u0308 A\u030angstro\u0308m", "Zo\u00eb \u00c5ngstr\u00f6m"),  # NFC
        ("O'NEIL-SMITH JR.", "O'NEIL-SMITH JR."),
        ("7-ELEVEN INC", "7-ELEVEN INC"),
        ("\u674e\u5c0f\u9f99", "\u674e\u5c0f\u9f99"),
        ("   ", None),
        ("", None),
    ],
)
def test_names_are_normalised(text: str, expected: str | None) -> None:
    assert normalize_cardholder_name(text) == expected


def test_bundles_round_trip_and_bare_pans_stay_bare() -> None:
    assert CardBundle(VISA).seal() == b"4111111111111111"
    assert CardBundle.open(b"4111111111111111") == CardBundle(VISA)
    bundle = CardBundle(VISA, "2029-03", "Zo\u00eb DOE")
    assert CardBundle.open(bundle.seal()) == bundle
    assert pan_digits(bundle.seal()) == b"4111111111111111"
    assert pan_digits(CardBundle(VISA).seal()) == b"4111111111111111"


def test_newer_details_replace_older_ones_and_missing_ones_are_kept() -> None:
    older = CardBundle(VISA, "2027-01", "ZOE DOE")
    assert CardBundle(VISA, "2029-03").merged_over(older) == CardBundle(VISA, "2029-03", "ZOE DOE")
    assert CardBundle(VISA, None, "Z DOE").merged_over(older) == CardBundle(
        VISA, "2027-01", "Z DOE"
    )
