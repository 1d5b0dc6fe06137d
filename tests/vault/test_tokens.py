"""Token formats: shape, kept digits, and the Luhn setting, over thousands of cases."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.formats import BUILTIN_FORMATS, Dedup, FormatSpec, FormatType, LuhnMode
from vault.errors import FormatNotApplicable, InvalidPan
from vault.fpe.ff1 import FF1
from vault.pan import Pan, luhn_check_digit, luhn_valid
from vault.tokens import DRAWS_BEFORE_LISTING, FpeTokenizer, random_token_candidates, uuid_token


@st.composite
def pans(
    draw: st.DrawFn, lengths: tuple[int, ...] = tuple(range(12, 20)), luhn: bool | None = True
) -> Pan:
    length = draw(st.sampled_from(lengths))
    body = draw(st.text(alphabet="0123456789", min_size=length - 1, max_size=length - 1))
    if luhn is None:
        last = draw(st.sampled_from("0123456789"))
    else:
        last = luhn_check_digit(body)
        if not luhn:
            last = str((int(last) + draw(st.integers(1, 9))) % 10)
    return Pan(body + last)


RANDOM_SPECS = [
    FormatSpec(
        type=FormatType.RANDOM,
        keep_leading=lead,
        keep_trailing=4,
        luhn=mode,
        # BIN-8 only on 16 digits or more (PCI SSC FAQ 1091).
        pan_lengths=tuple(range(16 if lead > 6 else max(12, lead + 4 + 2), 20)),
    )
    for lead in (0, 6, 8)
    for mode in LuhnMode
]


def _assert_shape(spec: FormatSpec, pan: Pan, token: str) -> None:
    digits = pan.reveal()
    assert len(token) == len(digits)
    assert token.isascii()
    assert token.isdigit()
    assert token[: spec.keep_leading] == digits[: spec.keep_leading]
    assert token[len(token) - spec.keep_trailing :] == digits[len(digits) - spec.keep_trailing :]
    if spec.luhn is LuhnMode.FAIL:
        assert not luhn_valid(token)
    elif spec.luhn is LuhnMode.PASS:
        assert luhn_valid(token)
    assert token != digits


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(RANDOM_SPECS), st.data())
def test_random_formats(spec: FormatSpec, data: st.DataObject) -> None:
    pan = data.draw(pans(spec.pan_lengths, luhn=None))
    token = next(random_token_candidates(spec, pan))
    _assert_shape(spec, pan, token)


@pytest.mark.parametrize("name", ["pan_bin6_last4", "pan_bin8_last4", "pan_last4"])
def test_builtin_random_formats_fail_luhn(name: str) -> None:
    spec = BUILTIN_FORMATS[name]
    assert spec.luhn is LuhnMode.FAIL
    pan = Pan("4111111111111111")
    for _ in range(500):
        _assert_shape(spec, pan, next(random_token_candidates(spec, pan)))


def test_luhn_fail_is_unbiased_over_the_adjust_digit() -> None:
    spec = BUILTIN_FORMATS["pan_bin6_last4"]
    pan = Pan("4111111111111111")
    counts = [0] * 10
    for _ in range(5000):
        counts[int(next(random_token_candidates(spec, pan))[11])] += 1
    # Exactly one value of the adjust digit passes for any prefix; the other nine are used.
    assert all(c > 300 for c in counts)


def test_small_space_is_enumerated_then_exhausted() -> None:
    spec = FormatSpec(
        type=FormatType.RANDOM,
        keep_leading=6,
        keep_trailing=4,
        luhn=LuhnMode.PASS,
        pan_lengths=(12,),
    )
    pan = Pan("411111001111")
    candidates = list(random_token_candidates(spec, pan))
    # 2 free digits, Luhn pass: 10 tokens, less the PAN itself if it passes. A few draws
    # first (`DRAWS_BEFORE_LISTING`), then the whole space listed once, in random order.
    space = 9 if pan.luhn_valid() else 10
    listed = candidates[-space:]
    assert len(candidates) <= space + DRAWS_BEFORE_LISTING
    assert len(set(listed)) == space
    assert set(candidates) == set(listed)
    assert pan.reveal() not in candidates
    assert all(luhn_valid(c) for c in candidates)


def test_large_space_stops_after_bounded_draws() -> None:
    spec = BUILTIN_FORMATS["pan_last4"]
    assert sum(1 for _ in random_token_candidates(spec, Pan("4111111111111111"))) <= 64


def test_length_not_accepted() -> None:
    with pytest.raises(FormatNotApplicable, match="not 13"):
        next(random_token_candidates(BUILTIN_FORMATS["pan_bin8_last4"], Pan("4111111111119")))


FPE_SPECS = [
    FormatSpec(
        type=FormatType.FPE,
        keep_leading=lead,
        keep_trailing=trail,
        luhn=mode,
        pan_lengths=tuple(range(max(16 if lead > 6 else 12, lead + trail + 6), 20)),
    )
    for lead, trail in ((6, 4), (0, 4), (8, 4), (6, 0))
    for mode in LuhnMode
]


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(FPE_SPECS), st.binary(min_size=32, max_size=32), st.data())
def test_fpe_formats_round_trip(spec: FormatSpec, key: bytes, data: st.DataObject) -> None:
    pan = data.draw(pans(spec.pan_lengths, luhn=True if spec.luhn is not LuhnMode.ANY else None))
    tokenizer = FpeTokenizer(FF1(key))
    domain = data.draw(st.sampled_from(["spiffe://cofre/payments", "spiffe://cofre/store"]))
    token = tokenizer.encrypt(spec, pan, domain=domain)
    if spec.luhn is LuhnMode.PASS and token == pan.reveal():
        return  # a fixed point of the walk: the vault refuses it (token equals a held PAN)
    _assert_shape(spec, pan, token)
    assert tokenizer.encrypt(spec, pan, domain=domain) == token  # deterministic
    assert tokenizer.decrypt(spec, token, domain=domain) == pan


def test_fpe_luhn_modes_need_a_valid_pan() -> None:
    tokenizer = FpeTokenizer(FF1(bytes(32)))
    with pytest.raises(InvalidPan, match="Luhn-valid"):
        tokenizer.encrypt(BUILTIN_FORMATS["pan_fpe"], Pan("4111111111111112"), domain="d")


def test_fpe_tweak_is_the_kept_digits() -> None:
    tokenizer = FpeTokenizer(FF1(bytes(32)))
    spec = FormatSpec(type=FormatType.FPE, luhn=LuhnMode.ANY, pan_lengths=(16,))
    a = tokenizer.encrypt(spec, Pan("4111111234561111"), domain="d")
    b = tokenizer.encrypt(spec, Pan("5111111234561111"), domain="d")
    assert a[6:12] != b[6:12]


def test_fpe_tweak_binds_the_domain() -> None:
    """The same card in two domains: unrelated FF1 tokens, each decrypting only in its
    own domain."""
    tokenizer = FpeTokenizer(FF1(bytes(32)))
    spec = BUILTIN_FORMATS["pan_fpe"]
    pan = Pan("4111111111111111")
    a = tokenizer.encrypt(spec, pan, domain="spiffe://cofre/payments")
    b = tokenizer.encrypt(spec, pan, domain="spiffe://cofre/store")
    assert a != b
    assert tokenizer.decrypt(spec, a, domain="spiffe://cofre/payments") == pan
    assert tokenizer.decrypt(spec, a, domain="spiffe://cofre/store") != pan


def test_uuid_tokens() -> None:
    tokens = {uuid_token() for _ in range(1000)}
    assert len(tokens) == 1000
    assert all(uuid.UUID(t).version == 4 for t in tokens)


def test_fpe_dedup_must_be_convergent() -> None:
    with pytest.raises(ValueError, match="deterministic"):
        FormatSpec(type=FormatType.FPE, dedup=Dedup.RANDOM, pan_lengths=(16,))
