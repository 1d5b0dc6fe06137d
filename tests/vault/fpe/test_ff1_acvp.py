"""FF1 against NIST's ACVP test cases (radix 10, 26 and 64; 128, 192 and 256-bit keys;
tweaks of 0 to 16 bytes; inputs of 10 to 56 symbols), beside the nine SP 800-38G samples
(`test_ff1.py`): the ACVP cases reach radices, alphabets and lengths the samples do not.
The literal transcription of the standard is checked against them too, so the property
tests that compare the two rest on a reference that meets NIST's answers."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.vectors import ff1_acvp_cases
from tests.vault.fpe.reference_ff1 import reference_encrypt
from vault.fpe.ff1 import FF1

CASES = ff1_acvp_cases()


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"tc{c['tcId']}")
def test_acvp_case(case: dict[str, Any]) -> None:
    key = bytes.fromhex(case["key"])
    assert len(key) * 8 == case["keyLen"]
    ff1 = FF1(key, case["radix"], case["alphabet"])
    tweak = bytes.fromhex(case["tweak"])
    assert ff1.encrypt(case["pt"], tweak) == case["ct"]
    assert ff1.decrypt(case["ct"], tweak) == case["pt"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"tc{c['tcId']}")
def test_reference_transcription_meets_acvp(case: dict[str, Any]) -> None:
    alphabet = case["alphabet"]
    digits = [alphabet.index(char) for char in case["pt"]]
    out = reference_encrypt(
        bytes.fromhex(case["key"]), bytes.fromhex(case["tweak"]), case["radix"], digits
    )
    assert "".join(alphabet[d] for d in out) == case["ct"]


def test_the_cases_cover_what_they_should() -> None:
    """What the file must keep holding: every key length, three radices, both
    directions, empty and 16-byte tweaks, and card-length inputs."""
    assert len(CASES) == 127
    assert {c["keyLen"] for c in CASES} == {128, 192, 256}
    assert {c["radix"] for c in CASES} == {10, 26, 64}
    assert {c["direction"] for c in CASES} == {"encrypt", "decrypt"}
    assert {len(c["tweak"]) // 2 for c in CASES} >= {0, 16}
    assert {len(c["pt"]) for c in CASES if c["radix"] == 10} & set(range(12, 20))
