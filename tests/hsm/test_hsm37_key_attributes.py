"""Session 37: every key Cofre makes carries only the usages it is used for, and a key
lookup never takes a key whose value can leave the token, through real SoftHSM2 and the
CloudHSM-behaviour shim.

Usage (PCI DSS 3.6.1.1, a key used for one purpose only). The fingerprint key was made
with ``CKA_VERIFY`` true, which Cofre never uses: a holder of the PIN could ask the token
"is this MAC the fingerprint of that card?" under a flag no code needs. The data keys,
session objects made only to be wrapped and unwrapped, carried ``CKA_ENCRYPT`` and
``CKA_DECRYPT`` true although the token never encrypts under them.

Lookups. A key is found by its label. Once the key Cofre made under a label is gone (a
holder of the PIN destroyed it) and another stands there, readable and extractable, the
provider found that one and used it: HMACs of cards under a key whose value its maker
read out (the key registry notices at its next listing, up to a second later on each
node; docs/key-hierarchy.md), data keys wrapped under a KEK they hold. The provider now
refuses a secret or private key that is, or ever was, readable or extractable, at the
lookup that would use it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import AttributeTypeInvalid

from hsm.errors import HSMError
from hsm.mechanisms import usage_template
from hsm.models import KeyInfo
from hsm.provider import HSMProvider
from tests.support.cloudhsm_shim import CloudHSMShim, round_trips

_USAGES = (
    Attribute.ENCRYPT,
    Attribute.DECRYPT,
    Attribute.WRAP,
    Attribute.UNWRAP,
    Attribute.SIGN,
    Attribute.VERIFY,
    Attribute.DERIVE,
)


def _usages(provider: HSMProvider, label: str, object_class: ObjectClass) -> set[str]:
    """The usage flags the token reports true for key `label` of `object_class`."""

    def read(session: Any) -> set[str]:
        key = session.get_key(object_class=object_class, label=label)
        return {flag.name for flag in _USAGES if _flag(key, flag)}

    return provider._run(read)


@pytest.fixture
def label(hsm_provider: HSMProvider) -> Iterator[str]:
    """A label of this test's own (never a Cofre label other tests would meet)."""
    name = f"hsm37-{secrets.token_hex(4)}"
    yield name
    if _any_object(hsm_provider, name):
        hsm_provider.destroy_key(name)


def _any_object(provider: HSMProvider, label: str) -> bool:
    return provider._run(lambda s: any(True for _ in s.get_objects({Attribute.LABEL: label})))


def test_the_fingerprint_key_may_only_sign(hsm_provider: HSMProvider, label: str) -> None:
    hsm_provider.generate_hmac_key(label)
    assert _usages(hsm_provider, label, ObjectClass.SECRET_KEY) == {"SIGN"}


def test_each_token_key_carries_only_its_usages(hsm_provider: HSMProvider, label: str) -> None:
    hsm_provider.generate_kek(label)
    assert _usages(hsm_provider, label, ObjectClass.SECRET_KEY) == {"WRAP", "UNWRAP"}
    hsm_provider.destroy_key(label)
    hsm_provider.generate_aead_key(label)
    assert _usages(hsm_provider, label, ObjectClass.SECRET_KEY) == {"ENCRYPT", "DECRYPT"}
    hsm_provider.destroy_key(label)
    hsm_provider.generate_signing_key(label)
    assert _usages(hsm_provider, label, ObjectClass.PRIVATE_KEY) == {"SIGN"}
    assert _usages(hsm_provider, label, ObjectClass.PUBLIC_KEY) <= {"VERIFY"}


def test_a_data_key_in_the_token_can_do_nothing_but_be_wrapped(
    hsm_provider: HSMProvider, label: str
) -> None:
    hsm_provider.generate_kek(label)
    wrapped = hsm_provider.generate_wrapped_key(label)

    def unwrapped_usages(session: Any) -> set[str]:
        obj = hsm_provider._unwrap_object(session, wrapped, readable=False)
        try:
            return {flag.name for flag in _USAGES if _flag(obj, flag)}
        finally:
            obj.destroy()

    assert hsm_provider._run(unwrapped_usages) == set()


def _flag(obj: Any, flag: Attribute) -> bool:
    """Whether `obj` has usage `flag`: one the token does not report (SDK 5, for a key
    type that lacks it: attr-errors.html) has none."""
    try:
        return bool(obj[flag])
    except AttributeTypeInvalid:
        return False


def _plant_readable(provider: HSMProvider, label: str, key_type: KeyType) -> None:
    """What a holder of the PIN makes: a key under `label` whose value they can read."""
    usage = {Attribute.WRAP, Attribute.UNWRAP} if key_type == KeyType.AES else {Attribute.SIGN}

    def plant(session: Any) -> None:
        session.generate_key(
            key_type,
            256,
            label=label,
            id=b"planted",
            store=True,
            mechanism=(
                Mechanism.AES_KEY_GEN
                if key_type == KeyType.AES
                else Mechanism.GENERIC_SECRET_KEY_GEN
            ),
            template={
                **usage_template(key_type, usage),
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: False,
                Attribute.EXTRACTABLE: True,
            },
        )

    provider._run(plant, retry=False)


def test_an_hmac_never_runs_under_a_readable_key_standing_in_for_ours(
    hsm_provider: HSMProvider, label: str
) -> None:
    hsm_provider.generate_hmac_key(label)
    hsm_provider.hmac_sha256(label, b"4111111111111111")  # found and cached: ours
    hsm_provider.destroy_key(label)
    _plant_readable(hsm_provider, label, KeyType.GENERIC_SECRET)
    with pytest.raises(HSMError, match="can leave the token"):
        hsm_provider.hmac_sha256(label, b"4111111111111111")
        pytest.fail(f"HMAC computed under a readable key labelled {label!r}")
    with pytest.raises(HSMError, match="can leave the token"):
        hsm_provider.hmac_sha256_many(label, [b"4111111111111111"] * 20)


def test_a_data_key_is_never_wrapped_under_a_readable_kek(
    hsm_provider: HSMProvider, label: str
) -> None:
    _plant_readable(hsm_provider, label, KeyType.AES)
    with pytest.raises(HSMError, match="can leave the token"):
        wrapped = hsm_provider.generate_wrapped_key(label)
        pytest.fail(f"a data key wrapped under a readable KEK ({len(wrapped.wrapped)} bytes)")


def test_a_key_is_described_in_one_read(
    shim_provider: HSMProvider, cloudhsm_shim: CloudHSMShim
) -> None:
    """SDK 5 sends one request per ``C_GetAttributeValue`` and caches nothing; ask for
    every attribute in one template (pkcs11-attributes-retrieve.html). Describing a key
    read each attribute apart, twice (its length, then its value): 24 round trips."""
    label = f"hsm37-{secrets.token_hex(4)}"
    shim_provider.generate_kek(label)

    def describe_counted(session: Any) -> tuple[int, KeyInfo]:
        key = session.get_key(object_class=ObjectClass.SECRET_KEY, label=label)
        before = round_trips(cloudhsm_shim)
        info = shim_provider._describe(key)
        return round_trips(cloudhsm_shim) - before, info

    try:
        calls, info = shim_provider._run(describe_counted)
        assert calls <= 2
        assert (info.label, info.sensitive, info.extractable) == (label, True, False)
        assert str(info.key_check).startswith("kcv:")
    finally:
        shim_provider.destroy_key(label)


def test_a_readable_key_is_still_described(hsm_provider: HSMProvider, label: str) -> None:
    """Describing is not using: the registry and a ceremony's "label taken" check see a
    planted key for what it is."""
    _plant_readable(hsm_provider, label, KeyType.AES)
    assert hsm_provider.has_key(label)
    info = hsm_provider.describe_key(label)
    assert (info.sensitive, info.extractable) == (False, True)
