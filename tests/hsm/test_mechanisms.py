"""Wrap mechanisms by algorithm name, vendor numbers, and templates per key type."""

from __future__ import annotations

import pytest
from pkcs11 import DEFAULT, Attribute, KeyType, Mechanism

from hsm.errors import HSMMechanismUnsupported
from hsm.mechanisms import (
    CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD,
    CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD,
    WrapAlgorithm,
    pair_templates,
    resolve_wrap_mechanisms,
    usage_template,
    vendor_mechanism,
)

SOFTHSM = frozenset({0x2109, 0x210A, 0x1080})
CLOUDHSM = frozenset({CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD, CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD, 0x1080})


def test_softhsm_numbers_resolve_to_the_standard_mechanisms() -> None:
    found = resolve_wrap_mechanisms(SOFTHSM)
    assert found.preferred is WrapAlgorithm.AES_KWP_RFC5649
    assert found.mechanism("aes-kwp-rfc5649") is Mechanism.AES_KEY_WRAP_PAD
    assert found.mechanism("aes-kw-rfc3394") is Mechanism.AES_KEY_WRAP


def test_cloudhsm_vendor_numbers_resolve() -> None:
    found = resolve_wrap_mechanisms(CLOUDHSM)
    assert found.preferred is WrapAlgorithm.AES_KWP_RFC5649
    kwp = found.mechanism("aes-kwp-rfc5649")
    # A pseudo-member of python-pkcs11's enum: passes its isinstance check, is the number.
    assert isinstance(kwp, Mechanism)
    assert int(kwp) == 0x8000216F
    assert kwp.name == "CLOUDHSM_AES_KEY_WRAP_ZERO_PAD"
    assert int(found.mechanism("aes-kw-rfc3394")) == 0x80002109


def test_standard_kwp_wins_and_3394_is_the_fallback() -> None:
    both = resolve_wrap_mechanisms(frozenset({0x210B, CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD}))
    assert both.mechanism("aes-kwp-rfc5649") is Mechanism.AES_KEY_WRAP_KWP
    only_3394 = resolve_wrap_mechanisms(frozenset({CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD}))
    assert only_3394.preferred is WrapAlgorithm.AES_KW_RFC3394
    with pytest.raises(HSMMechanismUnsupported, match="no mechanism for aes-kwp-rfc5649"):
        only_3394.mechanism("aes-kwp-rfc5649")


def test_no_wrap_mechanism_and_unknown_names() -> None:
    none = resolve_wrap_mechanisms(frozenset({0x1080}))
    with pytest.raises(HSMMechanismUnsupported, match="no AES key-wrap"):
        _ = none.preferred
    with pytest.raises(HSMMechanismUnsupported, match="unknown wrap algorithm"):
        resolve_wrap_mechanisms(SOFTHSM).mechanism("des-wrap")


def test_legacy_mechanism_names_still_unwrap() -> None:
    found = resolve_wrap_mechanisms(CLOUDHSM)
    assert int(found.mechanism("AES_KEY_WRAP_PAD")) == CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD
    assert int(found.mechanism("AES_KEY_WRAP")) == CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD


def test_vendor_mechanism_returns_known_members() -> None:
    assert vendor_mechanism(0x2109, "whatever") is Mechanism.AES_KEY_WRAP


def test_generic_secret_template_sends_no_cipher_flags() -> None:
    template = usage_template(KeyType.GENERIC_SECRET, {Attribute.SIGN, Attribute.VERIFY})
    for flag in (Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.WRAP, Attribute.UNWRAP):
        assert template[flag] is DEFAULT  # python-pkcs11 drops DEFAULT entries
    assert template[Attribute.SIGN] is True
    assert template[Attribute.DERIVE] is False
    with pytest.raises(ValueError, match="do not support"):
        usage_template(KeyType.GENERIC_SECRET, {Attribute.ENCRYPT})


def test_aes_template_sends_every_flag() -> None:
    template = usage_template(KeyType.AES, {Attribute.WRAP, Attribute.UNWRAP})
    assert template[Attribute.WRAP] is True
    assert template[Attribute.ENCRYPT] is False
    assert DEFAULT not in template.values()


def test_ec_pair_templates_keep_each_half_to_its_flags() -> None:
    private, public = pair_templates(
        private={Attribute.SIGN: True, Attribute.TOKEN: True}, public={Attribute.VERIFY: True}
    )
    assert private[Attribute.SIGN] is True
    assert private[Attribute.DECRYPT] is DEFAULT
    assert private[Attribute.UNWRAP] is DEFAULT
    assert private[Attribute.TOKEN] is True
    assert public[Attribute.VERIFY] is True
    assert public[Attribute.ENCRYPT] is DEFAULT
    assert public[Attribute.WRAP] is DEFAULT
