"""Mechanisms by algorithm name, resolved against what the token offers, and key templates
that carry only the attributes a key type supports.

IN PCI SCOPE. Cofre stores the *algorithm* a data key was wrapped with
(``aes-kwp-rfc5649``, ``aes-kw-rfc3394``), never a mechanism number: the same RFC 5649
bytes come out of SoftHSM2's ``CKM_AES_KEY_WRAP_PAD`` (0x210A) and out of AWS CloudHSM's
``CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD`` (0x8000216F), so a wrapped key moves between
tokens when the record names the algorithm. Each algorithm lists the mechanism numbers
that implement it, in order of preference; the provider takes the first one the token's
mechanism list offers.

Vendor mechanism numbers and python-pkcs11. python-pkcs11 0.10.1 refuses any mechanism
that is not a member of its ``Mechanism`` IntEnum (``MechanismWithParam`` checks
``isinstance(mechanism, Mechanism)``) and has no member for CloudHSM's vendor IDs. The
workaround is `vendor_mechanism`: a pseudo-member of that enum made with
``int.__new__``, which passes the check and reaches ``CK_MECHANISM.mechanism`` as the
plain number. It touches no private state of the library, and the tests run it through
the CloudHSM-behaviour shim (tests/support/cloudhsm_shim.c), which accepts only the
vendor numbers. Drop it once python-pkcs11 takes raw numbers.

Templates. python-pkcs11 fills every usage flag (``CKA_ENCRYPT`` ... ``CKA_DERIVE``)
into a key template unless the caller sets it to ``pkcs11.DEFAULT``. AWS CloudHSM
(Client SDK 5) answers an attribute it does not support for the key type with an error:
``CKA_ENCRYPT``, ``CKA_DECRYPT``, ``CKA_WRAP`` and ``CKA_UNWRAP`` are unsupported for
generic secrets. `usage_template` therefore names every flag, sends the ones asked for,
and drops the rest and any the key type does not support.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from pkcs11 import DEFAULT, Attribute, KeyType, Mechanism

from hsm.errors import HSMMechanismUnsupported


class WrapAlgorithm(StrEnum):
    """An AES key-wrap algorithm, as stored with every wrapped data key."""

    AES_KWP_RFC5649 = "aes-kwp-rfc5649"
    AES_KW_RFC3394 = "aes-kw-rfc3394"


# AWS CloudHSM Client SDK 5 vendor mechanisms (pkcs11-mechanisms.html, footnote 1;
# manage-aes-key-wrapping.html): the standard 0x2109/0x210A/0x210B are not offered.
CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD: Final = 0x80002109
CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD: Final = 0x8000216F


def vendor_mechanism(number: int, name: str) -> Mechanism:
    """Return `number` as a python-pkcs11 `Mechanism`, a member of the enum or not.

    For a number the enum knows, its member; otherwise a pseudo-member named `name` (see
    the module docstring for why). The pseudo-member is an `int` equal to `number`.
    """
    try:
        return Mechanism(number)
    except ValueError:
        pseudo: Mechanism = int.__new__(Mechanism, number)
        pseudo._name_ = name
        pseudo._value_ = number
        return pseudo


@dataclass(frozen=True, slots=True)
class _Candidate:
    number: int
    name: str


# Per algorithm, the mechanisms that implement it, most preferred first. 0x210A comes
# after the vendor number: PKCS#11 v2.40 leaves its padding loosely defined, and only
# SoftHSM2's is checked (against `cryptography`'s RFC 5649, in tests/hsm) to be RFC 5649.
_CANDIDATES: Final[dict[WrapAlgorithm, tuple[_Candidate, ...]]] = {
    WrapAlgorithm.AES_KWP_RFC5649: (
        _Candidate(0x210B, "AES_KEY_WRAP_KWP"),
        _Candidate(CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD, "CLOUDHSM_AES_KEY_WRAP_ZERO_PAD"),
        _Candidate(0x210A, "AES_KEY_WRAP_PAD"),
    ),
    WrapAlgorithm.AES_KW_RFC3394: (
        _Candidate(0x2109, "AES_KEY_WRAP"),
        _Candidate(CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD, "CLOUDHSM_AES_KEY_WRAP_NO_PAD"),
    ),
}
# Wrapped-key records written before issue 19 named a python-pkcs11 mechanism; the
# 0003 migration relabels them, and an unwrap still understands the old names.
LEGACY_WRAP_NAMES: Final[dict[str, WrapAlgorithm]] = {
    "AES_KEY_WRAP_KWP": WrapAlgorithm.AES_KWP_RFC5649,
    "AES_KEY_WRAP_PAD": WrapAlgorithm.AES_KWP_RFC5649,
    "AES_KEY_WRAP": WrapAlgorithm.AES_KW_RFC3394,
}


@dataclass(frozen=True, slots=True)
class WrapMechanisms:
    """The wrap mechanisms one token offers, by algorithm, and the one new wraps use."""

    by_algorithm: dict[WrapAlgorithm, Mechanism]

    @property
    def preferred(self) -> WrapAlgorithm:
        """Return the algorithm new wraps use: RFC 5649, else RFC 3394.

        Raises `HSMMechanismUnsupported` when the token offers neither.
        """
        for algorithm in WrapAlgorithm:
            if algorithm in self.by_algorithm:
                return algorithm
        raise HSMMechanismUnsupported("the token offers no AES key-wrap mechanism")

    def mechanism(self, algorithm: str) -> Mechanism:
        """Return the token's mechanism for `algorithm` (a `WrapAlgorithm` value or a legacy
        mechanism name). Raises `HSMMechanismUnsupported`."""
        try:
            resolved = LEGACY_WRAP_NAMES.get(algorithm) or WrapAlgorithm(algorithm)
        except ValueError:
            raise HSMMechanismUnsupported(f"unknown wrap algorithm {algorithm!r}") from None
        try:
            return self.by_algorithm[resolved]
        except KeyError:
            raise HSMMechanismUnsupported(
                f"the token offers no mechanism for {resolved.value}"
            ) from None


def resolve_wrap_mechanisms(offered: frozenset[int]) -> WrapMechanisms:
    """Return, for each wrap algorithm, the first candidate mechanism in `offered`."""
    found: dict[WrapAlgorithm, Mechanism] = {}
    for algorithm, candidates in _CANDIDATES.items():
        for candidate in candidates:
            if candidate.number in offered:
                found[algorithm] = vendor_mechanism(candidate.number, candidate.name)
                break
    return WrapMechanisms(found)


# ------------------------------------------------------------------ templates
_USAGE_FLAGS: Final = (
    Attribute.ENCRYPT,
    Attribute.DECRYPT,
    Attribute.WRAP,
    Attribute.UNWRAP,
    Attribute.SIGN,
    Attribute.VERIFY,
    Attribute.DERIVE,
)
# SDK 5 attribute tables (pkcs11-attributes-interpreting.html), GenerateKey/UnwrapKey:
# AES keys take every usage flag; generic secrets only SIGN, VERIFY and DERIVE.
_SUPPORTED_USAGE: Final[dict[KeyType, frozenset[Attribute]]] = {
    KeyType.AES: frozenset(_USAGE_FLAGS),
    KeyType.GENERIC_SECRET: frozenset({Attribute.SIGN, Attribute.VERIFY, Attribute.DERIVE}),
}
# Key pairs: python-pkcs11 fills these per half; EC halves support only some of them.
EC_PRIVATE_USAGE: Final = frozenset({Attribute.SIGN, Attribute.DERIVE})
EC_PUBLIC_USAGE: Final = frozenset({Attribute.VERIFY})
_PUBLIC_FLAGS: Final = (Attribute.ENCRYPT, Attribute.WRAP, Attribute.VERIFY)
_PRIVATE_FLAGS: Final = (Attribute.DECRYPT, Attribute.UNWRAP, Attribute.SIGN, Attribute.DERIVE)


def usage_template(
    key_type: KeyType, allowed: set[Attribute], *, supported: frozenset[Attribute] | None = None
) -> dict[Attribute, Any]:
    """Return template entries for every usage flag: ``True`` for those in `allowed`,
    ``False`` for the others the key type supports, `pkcs11.DEFAULT` (not sent) for the
    ones it does not support.

    Raises `ValueError` if `allowed` holds a flag the key type does not support.
    """
    usable = supported if supported is not None else _SUPPORTED_USAGE[key_type]
    if not allowed <= usable:
        raise ValueError(f"{key_type.name} keys do not support {sorted(a.name for a in allowed)}")
    return {flag: (flag in allowed) if flag in usable else DEFAULT for flag in _USAGE_FLAGS}


# What every secret or private key Cofre makes holds: kept on the token, usable only in a
# logged-in session, sensitive and never extractable (its value never leaves the HSM).
KEPT_SECRET: Final[Mapping[Attribute, Any]] = MappingProxyType(
    {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
    }
)


def secret_key_template(
    key_type: KeyType, allowed: set[Attribute], *, strict: bool = False
) -> dict[Attribute, Any]:
    """The template of a secret key of `key_type` allowed only the usages in `allowed`
    (`usage_template`) and `KEPT_SECRET`. `strict`: every usage flag is sent, false
    unless allowed, also those SDK 5 does not support for the key type (see
    `narrowest_first`)."""
    supported = frozenset(_USAGE_FLAGS) if strict else None
    return {**usage_template(key_type, allowed, supported=supported), **KEPT_SECRET}


def pair_templates(
    private: dict[Attribute, Any], public: dict[Attribute, Any], *, strict: bool = False
) -> tuple[dict[Attribute, Any], dict[Attribute, Any]]:
    """Return EC key-pair templates with only each half's supported usage flags set
    (`strict`: every flag of each half's set, false unless asked for)."""
    private_usage = frozenset(_PRIVATE_FLAGS) if strict else EC_PRIVATE_USAGE
    public_usage = frozenset(_PUBLIC_FLAGS) if strict else EC_PUBLIC_USAGE
    private_template: dict[Attribute, Any] = {
        **dict.fromkeys(_PRIVATE_FLAGS, DEFAULT),
        **{f: (private.get(f) is True) for f in _PRIVATE_FLAGS if f in private_usage},
        **{k: v for k, v in private.items() if k not in _USAGE_FLAGS},
    }
    public_template: dict[Attribute, Any] = {
        **dict.fromkeys(_PUBLIC_FLAGS, DEFAULT),
        **{f: (public.get(f) is True) for f in _PUBLIC_FLAGS if f in public_usage},
        **{k: v for k, v in public.items() if k not in _USAGE_FLAGS},
    }
    return private_template, public_template


def new_key_id() -> bytes:
    """Return a fresh random ``CKA_ID`` (16 bytes): CloudHSM has refused empty IDs."""
    return secrets.token_bytes(16)
