"""FF1 against the NIST SP 800-38G samples, a literal transcription of the standard,
and the invariants that make it FPE."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cofre.errors import CofreError
from tests.support.vectors import ff1_samples
from tests.vault.fpe.reference_ff1 import reference_encrypt
from vault.errors import FPEError
from vault.fpe.ff1 import FF1

ALPHABET36 = "0123456789abcdefghijklmnopqrstuvwxyz"


@pytest.mark.parametrize("sample", ff1_samples(), ids=lambda s: f"sample{s['n']}")
def test_nist_samples(sample: dict[str, Any]) -> None:
    ff1 = FF1(bytes.fromhex(sample["key"]), sample["radix"])
    tweak = bytes.fromhex(sample["tweak"])
    assert ff1.encrypt(sample["pt"], tweak) == sample["ct"]
    assert ff1.decrypt(sample["ct"], tweak) == sample["pt"]


def test_all_nine_samples_present() -> None:
    assert [s["n"] for s in ff1_samples()] == list(range(1, 10))


keys = st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n))


@st.composite
def radix_and_text(draw: st.DrawFn, max_len: int = 90) -> tuple[int, str]:
    radix = draw(st.sampled_from([2, 3, 8, 10, 16, 26, 36]))
    min_len = 1
    while radix**min_len < 1_000_000:
        min_len += 1
    text = draw(st.text(alphabet=ALPHABET36[:radix], min_size=max(2, min_len), max_size=max_len))
    return radix, text


@settings(max_examples=300, deadline=None)
@given(keys, radix_and_text(), st.binary(max_size=40))
def test_round_trip_preserves_length_and_alphabet(
    key: bytes, rt: tuple[int, str], tweak: bytes
) -> None:
    radix, text = rt
    ff1 = FF1(key, radix)
    ct = ff1.encrypt(text, tweak)
    assert len(ct) == len(text)
    assert set(ct) <= set(ALPHABET36[:radix])
    assert ff1.decrypt(ct, tweak) == text


@settings(max_examples=150, deadline=None)
@given(keys, radix_and_text(max_len=120), st.binary(max_size=40))
def test_matches_literal_transcription(key: bytes, rt: tuple[int, str], tweak: bytes) -> None:
    radix, text = rt
    digits = [ALPHABET36.index(c) for c in text]
    expected = "".join(ALPHABET36[d] for d in reference_encrypt(key, tweak, radix, digits))
    assert FF1(key, radix).encrypt(text, tweak) == expected


@settings(max_examples=100, deadline=None)
@given(
    keys,
    st.text(alphabet="0123456789", min_size=6, max_size=19),
    st.binary(max_size=16),
    st.binary(max_size=16),
)
def test_different_tweaks_give_different_outputs(
    key: bytes, text: str, tweak1: bytes, tweak2: bytes
) -> None:
    ff1 = FF1(key)
    if tweak1 != tweak2:
        # Collisions are possible in principle (probability 1/10^n); over 6+ digits and a
        # hundred cases, seeing one means the tweak is not reaching the PRF.
        assert ff1.encrypt(text, tweak1) != ff1.encrypt(text, tweak2)


def test_large_radix_with_custom_alphabet() -> None:
    alphabet = "".join(chr(0x4E00 + i) for i in range(1000))
    ff1 = FF1(bytes(16), 1000, alphabet)
    text = alphabet[5] + alphabet[999] + alphabet[0] + alphabet[42]
    ct = ff1.encrypt(text, b"t")
    assert len(ct) == 4
    assert set(ct) <= set(alphabet)
    assert ff1.decrypt(ct, b"t") == text
    digits = [alphabet.index(c) for c in text]
    expected = "".join(alphabet[d] for d in reference_encrypt(bytes(16), b"t", 1000, digits))
    assert ct == expected


def test_custom_alphabet_small_radix() -> None:
    ff1 = FF1(bytes(16), 10, "ABCDEFGHIJ")
    ct = ff1.encrypt("ABCDEFGHIJ")
    assert ct == "".join("ABCDEFGHIJ"[int(d)] for d in FF1(bytes(16)).encrypt("0123456789"))
    assert ff1.decrypt(ct) == "ABCDEFGHIJ"


def test_radix_65536() -> None:
    alphabet = "".join(chr(i) for i in range(0x10000) if not 0xD800 <= i < 0xE000)
    alphabet += "".join(chr(0x10000 + i) for i in range(0x800))
    ff1 = FF1(bytes(32), 65536, alphabet)
    assert ff1.min_length == 2
    text = alphabet[1] + alphabet[65535]
    assert ff1.decrypt(ff1.encrypt(text)) == text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key": b"short"}, "16, 24 or 32"),
        ({"key": "0" * 16}, "16, 24 or 32"),
        ({"key": bytes(16), "radix": 1}, "radix"),
        ({"key": bytes(16), "radix": 65537}, "radix"),
        ({"key": bytes(16), "radix": True}, "radix"),
        ({"key": bytes(16), "radix": 37}, "explicit alphabet"),
        ({"key": bytes(16), "radix": 3, "alphabet": "ab"}, "exactly 3"),
        ({"key": bytes(16), "radix": 3, "alphabet": "aab"}, "repeat"),
        ({"key": bytes(16), "radix": 3, "alphabet": 123}, "string"),
    ],
)
def test_bad_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(FPEError, match=message):
        FF1(**kwargs)


@pytest.mark.parametrize(
    ("text", "tweak", "message"),
    [
        ("12345", b"", "at least 6"),  # 10^5 < 10^6
        ("", b"", "at least 6"),
        ("12345a", b"", "outside"),
        ("١٢٣٤٥٦٧", b"", "outside"),
        (1234567, b"", "string"),
        ("1234567", "tweak", "bytes"),
    ],
)
def test_bad_input(text: Any, tweak: Any, message: str) -> None:
    ff1 = FF1(bytes(16))
    with pytest.raises(FPEError, match=message) as info:
        ff1.encrypt(text, tweak)
    assert isinstance(info.value, CofreError)
    assert isinstance(info.value, ValueError)
    with pytest.raises(FPEError):
        ff1.decrypt(text, tweak)


def test_min_length_by_radix() -> None:
    assert FF1(bytes(16), 10).min_length == 6
    assert FF1(bytes(16), 2).min_length == 20
    assert FF1(bytes(16), 36).min_length == 4


def test_repr_hides_key() -> None:
    key = bytes(range(16))
    assert key.hex() not in repr(FF1(key))
    assert "hidden" in repr(FF1(key))


@pytest.mark.parametrize(
    ("radix", "length", "tweak"),
    [
        (10, 72, b""),  # b = 15: [i] || NUM(B) just fits the last block
        (10, 74, b""),  # b = 16: NUM(B) spills over, the general CBC-MAC path
        (10, 120, bytes(range(40))),  # d > 16: S needs more than one block
        (2, 300, b"x" * 17),
        (36, 64, b"tweak"),
    ],
)
def test_long_inputs_match_literal_transcription(radix: int, length: int, tweak: bytes) -> None:
    text = "".join(ALPHABET36[(i * 7 + 3) % radix] for i in range(length))
    digits = [ALPHABET36.index(c) for c in text]
    expected = "".join(ALPHABET36[d] for d in reference_encrypt(bytes(24), tweak, radix, digits))
    ff1 = FF1(bytes(24), radix)
    assert ff1.encrypt(text, tweak) == expected
    assert ff1.decrypt(expected, tweak) == text
