"""Review of session 37's key templates (rev37c): a vault made by an older version keeps
its keys after the upgrade, made with the templates of that version (usage flags left
to the token's default: SoftHSM2's is true, so the fingerprint key could also encrypt,
the audit key decrypt, the data keys encrypt and decrypt). The new lookups refuse a key
that can leave the token; these keys never could, so each is still found, used, listed
as one key (the key registry's identity) and rotated from, through real SoftHSM2 and the
CloudHSM-behaviour shim. Held at review: every test here passed before and after."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pkcs11 import Attribute, KeyType, Mechanism
from pkcs11.util.ec import encode_named_curve_parameters

from hsm.mechanisms import pair_templates, secret_key_template, usage_template
from hsm.models import WrappedKey
from hsm.provider import HSMProvider
from vault.key_registry import token_identities

_P256 = "1.2.840.10045.3.1.7"


@pytest.fixture
def labels(hsm_provider: HSMProvider) -> Iterator[dict[str, str]]:
    """Labels of this test's own for a KEK, a fingerprint key and an audit key."""
    tag = secrets.token_hex(4)
    names = {kind: f"rev37c-{kind}-{tag}" for kind in ("kek", "kek2", "fp", "audit")}
    yield names
    for name in names.values():
        if hsm_provider.has_key(name) or _public_only(hsm_provider, name):
            hsm_provider.destroy_key(name)


def _public_only(provider: HSMProvider, label: str) -> bool:
    return provider._run(lambda s: any(True for _ in s.get_objects({Attribute.LABEL: label})))


def _make_old_keys(provider: HSMProvider, names: dict[str, str]) -> WrappedKey:
    """The keys as the version before session 37 made them (its templates, verbatim:
    the generic secret with SIGN and VERIFY, the others left to the token; the pair's
    unsupported flags left to the token), and a data key wrapped under the KEK with the
    old data-key template (ENCRYPT and DECRYPT true)."""

    def make(session: Any) -> WrappedKey:
        kek = session.generate_key(
            KeyType.AES,
            256,
            id=secrets.token_bytes(16),
            label=names["kek"],
            store=True,
            template=secret_key_template(KeyType.AES, {Attribute.WRAP, Attribute.UNWRAP}),
        )
        session.generate_key(
            KeyType.GENERIC_SECRET,
            256,
            id=secrets.token_bytes(16),
            label=names["fp"],
            store=True,
            mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
            template=secret_key_template(
                KeyType.GENERIC_SECRET, {Attribute.SIGN, Attribute.VERIFY}
            ),
        )
        private, public = pair_templates(
            private={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
            },
            public={Attribute.TOKEN: True, Attribute.VERIFY: True},
        )
        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(_P256)}, local=True
        )
        params.generate_keypair(
            id=secrets.token_bytes(16),
            label=names["audit"],
            store=True,
            public_template=public,
            private_template=private,
        )
        data_key = session.generate_key(
            KeyType.AES,
            256,
            id=(key_id := secrets.token_bytes(16)),
            label=f"rev37c-session-{key_id.hex()[:8]}",
            store=False,
            template={
                **usage_template(KeyType.AES, {Attribute.ENCRYPT, Attribute.DECRYPT}),
                Attribute.TOKEN: False,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: True,
            },
        )
        mechanisms = provider._wrap_mechanisms(session)
        algorithm = mechanisms.preferred
        try:
            wrapped = kek.wrap_key(data_key, mechanism=mechanisms.mechanism(algorithm))
        finally:
            data_key.destroy()
        return WrappedKey(wrapped=bytes(wrapped), algorithm=algorithm, kek_label=names["kek"])

    return provider._run(make)


def test_keys_of_an_older_vault_still_serve(
    hsm_provider: HSMProvider, labels: dict[str, str]
) -> None:
    wrapped = _make_old_keys(hsm_provider, labels)
    hsm_provider._forget_keys()  # as a fresh start of the new version would find them

    # Each key is found for use (none can leave the token) and does its one job.
    mac = hsm_provider.hmac_sha256(labels["fp"], b"4111")
    assert len(mac) == 32
    assert hsm_provider.hmac_sha256_many(labels["fp"], [b"4111", b"4112"])[0] == mac
    signature = hsm_provider.sign(labels["audit"], b"head")
    public = load_pem_public_key(hsm_provider.public_key_pem(labels["audit"]))
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, b"head", ec.ECDSA(hashes.SHA256()))
    value = hsm_provider.unwrap_key(wrapped)
    assert len(value) == 32
    assert len(hsm_provider.unwrap_key(hsm_provider.generate_wrapped_key(labels["kek"]))) == 32

    # A KEK rotation from the old KEK to a new one moves the old data key.
    hsm_provider.generate_kek(labels["kek2"])
    moved = hsm_provider.rewrap_key(wrapped, labels["kek2"])
    assert hsm_provider.unwrap_key(moved) == value

    # Listed, each old key is one key with an identity (registered, never a twin).
    listed = [k for k in hsm_provider.list_keys() if k.label in labels.values()]
    identities = token_identities(listed)
    assert all(identities[name] is not None for name in labels.values()), identities
