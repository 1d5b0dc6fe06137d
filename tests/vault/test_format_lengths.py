"""Every built-in format at every PAN length, and the inputs at the edges, checked from
outside (session 36's format review): what each format does with a 12- to 19-digit card
(a token of the promised shape, or a stable refusal), that no FF1 format can run on a
domain under SP 800-38G Rev. 1's 10^6, and what a masked reveal shows at each length
against PCI DSS 3.4.1's display limit (at most the BIN and the last four)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import Engine

from cofre.redaction import masked_leading
from hsm.provider import HSMProvider
from policies.formats import (
    BIN8_MIN_PAN_LENGTH,
    BUILTIN_FORMATS,
    FPE_MIN_DOMAIN,
    FormatSpec,
    FormatType,
    LuhnMode,
)
from tests.support.policies import vault_on
from vault.errors import FormatNotApplicable, InvalidPan
from vault.models import CallContext
from vault.pan import Pan, luhn_check_digit, luhn_valid
from vault.service import TokenizeRequest, VaultService
from vault.tokens import FpeTokenizer

POLICY = """
[formats.fpe_any]
type = "fpe"
luhn = "any"
pan_lengths = [16]

[formats.fpe_pass]
type = "fpe"
luhn = "pass"
pan_lengths = [16]

[identities."spiffe://cofre/payments"]
operations = ["tokenize", "detokenize_masked"]
formats = ["pan_bin6_last4", "pan_bin8_last4", "pan_last4", "pan_fpe", "uuid", "fpe_any",
           "fpe_pass"]
reveal = "masked"
oracle_guard = { max_pans_per_bucket = 100000 }
"""
PAYMENTS = CallContext("spiffe://cofre/payments", "req-lengths")


def card(length: int, body: str = "4111115") -> Pan:
    """A Luhn-valid card of `length` digits starting with `body`."""
    payload = (body + "7" * 20)[: length - 1]
    return Pan(payload + luhn_check_digit(payload))


# What each built-in format accepts (the module table of policies/formats.py).
ACCEPTS = {
    "pan_bin6_last4": range(12, 20),
    "pan_bin8_last4": range(BIN8_MIN_PAN_LENGTH, 20),
    "pan_last4": range(12, 20),
    "pan_fpe": range(16, 20),
    "uuid": range(12, 20),
}


@pytest.fixture
def service(engine: Engine, hsm_provider: HSMProvider) -> Iterator[VaultService]:
    vault = vault_on(engine, hsm_provider, POLICY)
    yield vault
    vault.close()


def test_every_builtin_format_at_every_length(service: VaultService) -> None:
    """A token of the format's shape where the format accepts the length, else 422
    `format_not_applicable`; a masked reveal of the card shows the leading digits
    `masked_leading` allows (BIN6 from 16 digits, fewer below, never the BIN8 a
    16+-digit card could show under 3.4.1) and the last four."""
    for name, spec in BUILTIN_FORMATS.items():
        for length in range(12, 20):
            pan = card(length)
            request = TokenizeRequest(pan, name)
            if length not in ACCEPTS[name]:
                with pytest.raises(FormatNotApplicable) as refused:
                    service.tokenize(PAYMENTS, request)
                assert refused.value.code == "format_not_applicable"
                continue
            token = service.tokenize(PAYMENTS, request).token
            digits = pan.reveal()
            assert token != digits
            if spec.type is not FormatType.UUID:
                assert len(token) == length
                assert token.isdigit()
                assert not luhn_valid(token)  # every built-in pan_* format fails Luhn
                assert token[: spec.keep_leading] == digits[: spec.keep_leading]
                assert token[-4:] == digits[-4:]
            masked = service.detokenize_masked(PAYMENTS, token).masked
            shown = masked_leading(length)
            assert masked == digits[:shown] + "*" * (length - shown - 4) + digits[-4:]
            assert shown <= 6


def test_a_ff1_format_never_runs_under_the_minimum_domain() -> None:
    """pan_fpe keeps BIN6 and the last four: 16 to 19 digits leave 6 to 9 to encrypt
    (10^6 to 10^9), and a 12- to 15-digit card, which would leave 2 to 5, is refused
    before any FF1 call."""
    spec = BUILTIN_FORMATS["pan_fpe"]
    for length in range(12, 20):
        free = spec.free_digits(length)
        if length in spec.pan_lengths:
            assert 10**free >= FPE_MIN_DOMAIN
        else:
            assert 10**free < FPE_MIN_DOMAIN


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(list(FormatType)),
    st.integers(0, 8),
    st.integers(0, 4),
    st.sampled_from(list(LuhnMode)),
    st.sets(st.integers(12, 19), min_size=1),
)
def test_no_policy_format_can_be_written_under_the_minimum_domain(
    kind: FormatType, lead: int, trail: int, luhn: LuhnMode, lengths: set[int]
) -> None:
    """Any format a policy can define: FF1 over at least 10^6 values at every length it
    accepts (the Luhn settings walk FF1 over the 10^(n-1) middles that keep the card
    Luhn-valid, so at least 10^5 tokens per BIN and last four), at least two free digits
    in a random format, and BIN-8 only from 16 digits."""
    try:
        spec = FormatSpec(
            type=kind,
            keep_leading=lead,
            keep_trailing=trail,
            luhn=luhn,
            pan_lengths=tuple(sorted(lengths)),
        )
    except ValidationError:
        return
    if kind is FormatType.UUID:
        return
    for length in spec.pan_lengths:
        free = spec.free_digits(length)
        assert free >= 2
        if kind is FormatType.FPE:
            assert 10**free >= FPE_MIN_DOMAIN
        if lead > 6:
            assert length >= BIN8_MIN_PAN_LENGTH


@pytest.mark.parametrize(
    "digits",
    [
        "4" * 11,  # one short of the shortest PAN
        "4" * 20,  # one past the longest
        "411111",  # a BIN alone
        "41111111",  # an 8-digit BIN alone
    ],
)
def test_lengths_outside_12_to_19_are_no_pan(digits: str) -> None:
    with pytest.raises(InvalidPan, match="12 to 19 digits"):
        Pan(digits)


@pytest.mark.parametrize(
    ("pan", "name"),
    [
        (card(16, "0000000"), "pan_bin6_last4"),  # leading zeros
        (card(16, "0000000"), "pan_fpe"),
        (card(16, "0" * 19), "pan_bin6_last4"),  # all zeros (its check digit is 0 too)
        (card(16, "0" * 19), "pan_fpe"),
        (card(19, "00000000"), "pan_bin8_last4"),
        (card(16, "4444444444444444"), "pan_bin6_last4"),  # all one digit but the check
        (card(16, "4444444444444444"), "pan_fpe"),
        (card(12, "000000"), "pan_bin6_last4"),  # the fewest free digits: two
    ],
)
def test_edge_cards_round_trip_with_their_leading_zeros(
    service: VaultService, pan: Pan, name: str
) -> None:
    record = service.tokenize(PAYMENTS, TokenizeRequest(pan, name))
    digits = pan.reveal()
    assert len(record.token) == len(digits)
    assert record.token[:6] == digits[:6]
    assert record.token != digits
    assert not luhn_valid(record.token)
    again = service.tokenize(PAYMENTS, TokenizeRequest(pan, name))
    if BUILTIN_FORMATS[name].type is FormatType.FPE or len(digits) >= 16:
        assert again.token == record.token  # convergent where guessing is hopeless
    assert service.detokenize_masked(PAYMENTS, record.token).masked[-4:] == digits[-4:]


@pytest.mark.parametrize("name", ["fpe_any", "fpe_pass"])
def test_an_ff1_fixed_point_is_never_issued(
    service: VaultService, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """FF1 under ``luhn = "any"`` or ``"pass"`` maps a card to itself about once in 10^6
    (10^5) cards of its bucket; forced here, the card gets a re-issue, never itself."""
    pan = card(16, "4111118")
    real = FpeTokenizer.encrypt

    def fixed_point(self: FpeTokenizer, spec: FormatSpec, given: Pan, *, domain: str) -> str:
        if "\x00" in domain:  # a re-issue: as FF1 computes it
            return real(self, spec, given, domain=domain)
        return given.reveal()

    monkeypatch.setattr(FpeTokenizer, "encrypt", fixed_point)
    record = service.tokenize(PAYMENTS, TokenizeRequest(pan, name))
    assert record.token != pan.reveal()
    assert len(record.token) == 16
    assert record.token[:6] + record.token[-4:] == pan.reveal()[:6] + pan.reveal()[-4:]
    masked = service.detokenize_masked(PAYMENTS, record.token).masked
    assert masked == pan.masked()
