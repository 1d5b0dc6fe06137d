"""Session 38: a lookup compares the key it finds under a pinned label with the key
registry's record, once per pooled session and key, through real SoftHSM2 and the
CloudHSM-behaviour shim (tests/vault/test_cka38_substitute_keys.py has the attacks
through the vault)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from hsm.errors import HSMKeyNotRegistered
from hsm.mechanisms import secret_key_template
from hsm.models import KeyInfo
from hsm.provider import HSMProvider
from tests.support.cloudhsm_shim import CloudHSMShim, round_trips


@pytest.fixture
def label(hsm_provider: HSMProvider) -> Iterator[str]:
    name = f"cka38-{secrets.token_hex(4)}"
    yield name
    hsm_provider.pin_key_identities({})
    if hsm_provider.has_key(name):
        hsm_provider.destroy_key(name)


def _pin(provider: HSMProvider, info: KeyInfo) -> None:
    provider.pin_key_identities({info.label: (info.key_id, info.key_check)})


def _plant_same_id(provider: HSMProvider, label: str, key_id: bytes) -> None:
    """A sensitive, never extractable HMAC key under `label` with `key_id`."""

    def plant(session: Any) -> None:
        session.generate_key(
            KeyType.GENERIC_SECRET,
            256,
            label=label,
            id=key_id,
            store=True,
            mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
            template=secret_key_template(KeyType.GENERIC_SECRET, {Attribute.SIGN}),
        )

    provider._run(plant, retry=False)


def _key_id(provider: HSMProvider, label: str) -> bytes:
    return bytes(
        provider._run(
            lambda s: s.get_key(label=label, object_class=ObjectClass.SECRET_KEY)[Attribute.ID]
        )
    )


def test_a_substitute_with_our_id_is_refused_the_recorded_key_is_not(
    hsm_provider: HSMProvider, label: str
) -> None:
    info = hsm_provider.generate_hmac_key(label)
    _pin(hsm_provider, info)
    ours = hsm_provider.hmac_sha256(label, b"probe")
    key_id = _key_id(hsm_provider, label)
    hsm_provider.destroy_key(label)
    _plant_same_id(hsm_provider, label, key_id)
    assert hsm_provider.describe_key(label).key_id == info.key_id  # the same CKA_ID
    with pytest.raises(HSMKeyNotRegistered) as refused:
        mac = hsm_provider.hmac_sha256(label, b"probe")
        pytest.fail(f"MAC under a substitute (ours: {mac == ours})")
    assert refused.value.code == "hsm_key_unregistered"
    with pytest.raises(HSMKeyNotRegistered):
        hsm_provider.hmac_sha256_many(label, [b"probe"] * 70)


def test_a_new_record_makes_every_session_look_again(hsm_provider: HSMProvider, label: str) -> None:
    info = hsm_provider.generate_hmac_key(label)
    hsm_provider.hmac_sha256(label, b"probe")  # found and cached, unpinned
    hsm_provider.pin_key_identities({label: (info.key_id, "kcv:000000")})
    with pytest.raises(HSMKeyNotRegistered):
        hsm_provider.hmac_sha256(label, b"probe")
    _pin(hsm_provider, info)
    hsm_provider.hmac_sha256(label, b"probe")


def test_a_key_cofre_makes_again_under_a_label_is_not_held_to_the_old_record(
    hsm_provider: HSMProvider, label: str
) -> None:
    """A security-code epoch key is made again under its label after a lost
    transaction; the registry pins the new one when it records it."""
    _pin(hsm_provider, hsm_provider.generate_hmac_key(label))
    hsm_provider.destroy_key(label)
    hsm_provider.generate_hmac_key(label)
    hsm_provider.hmac_sha256(label, b"probe")


def test_a_pinned_lookup_adds_no_round_trip_per_call(
    shim_provider: HSMProvider, cloudhsm_shim: CloudHSMShim
) -> None:
    """SDK 5 sends every ``C_GetAttributeValue`` to the cluster: the comparison rides on
    the one read a lookup already made, once per pooled session and key."""
    label = f"cka38-{secrets.token_hex(4)}"
    info = shim_provider.generate_hmac_key(label)
    other = f"cka38-{secrets.token_hex(4)}"
    shim_provider.generate_hmac_key(other)
    try:

        def per_call(name: str) -> tuple[int, int]:
            before = round_trips(cloudhsm_shim)
            shim_provider.hmac_sha256(name, b"probe")
            first = round_trips(cloudhsm_shim) - before
            before = round_trips(cloudhsm_shim)
            for _ in range(10):
                shim_provider.hmac_sha256(name, b"probe")
            return first, round_trips(cloudhsm_shim) - before

        unpinned = per_call(other)
        _pin(shim_provider, info)
        pinned = per_call(label)
        assert pinned == unpinned
    finally:
        shim_provider.pin_key_identities({})
        shim_provider.destroy_key(label)
        shim_provider.destroy_key(other)
