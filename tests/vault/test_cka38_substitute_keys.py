"""Session 38: a key found by its label is used only when it is the key the registry
records under that label, through real SoftHSM2 and the CloudHSM-behaviour shim.

The holder of the crypto-user PIN destroys the key Cofre made under a registered label
and makes another there: sensitive and never extractable like ours (so the lookup's
session-37 check passes), even with the same ``CKA_ID`` (an ID is whatever its maker
asks for). Until session 38 the HSM layer found keys by label alone, and only the key
registry's listing compared identities, so:

- the fingerprint key: a card tokenized again got a fingerprint under the substitute, so
  no stored row matched and the vault issued a second token for a card it holds
  (convergence broken, each node until its next listing);
- the KEK: a new data key was wrapped under the substitute, and every card sealed under
  that data key is lost once the substitute goes;
- the audit key: with only the private half replaced (same label, same ``CKA_ID``, our
  public half kept) the registry's listing cannot tell anything changed (it sees one
  pair with the recorded ID and public point), and the signer, which resolves its label
  only when the handovers change, signed every later head with the substitute: heads no
  verifier accepts, for as long as the substitute stayed, not a second.

Now every lookup compares what it finds with the registry's record (`CKA_ID` and the
token-computed check value; for an EC key pair, the public point and one signature by
the private half verified under it), once per pooled session and key, and refuses a
key that differs (``hsm_key_unregistered``)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters
from sqlalchemy import Engine

from cofre.errors import CofreError
from hsm.keys import KeyHierarchy, KeyKind, key_label
from hsm.mechanisms import KEPT_SECRET, pair_templates
from hsm.provider import HSMProvider
from tests.support.pans import card_number
from tests.vault.conftest import PAYMENTS, officers_vault, plant_secret_key, unsigned_ceremonies
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService
from vault.signing import HSMTreeHeadSigner

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def vault(engine: Engine, rotation_provider: HSMProvider) -> Iterator[VaultService]:
    yield from officers_vault(engine, rotation_provider)


@pytest.fixture
def registered_next(
    vault: VaultService, engine: Engine, rotation_provider: HSMProvider
) -> Iterator[Any]:
    """Make and register the next version of a kind as a ceremony would (the tests never
    destroy a key they did not make); destroyed again at the end."""
    made: list[str] = []

    def make(kind: KeyKind) -> tuple[str, bytes]:
        version = KeyHierarchy(rotation_provider).versions(kind)[-1] + 1
        label = key_label(kind, version)
        info = KeyHierarchy(rotation_provider).create(kind, version)
        made.append(label)
        unsigned_ceremonies(vault)
        with engine.begin() as connection:
            vault.keyring.registry.register(connection, label, actor="test", how="cka38 test")
        vault.keyring.registry.registered(fresh=True)
        assert vault.keyring.registry.current_label(kind) == label
        return label, base64.b64decode(str(info.key_id))

    yield make
    for label in made:
        if rotation_provider.has_key(label) or _objects(rotation_provider, label):
            rotation_provider.destroy_key(label)


def _objects(provider: HSMProvider, label: str) -> int:
    return provider._run(lambda s: len(list(s.get_objects({Attribute.LABEL: label}))))


def _substitute_secret(provider: HSMProvider, kind: KeyKind, label: str, key_id: bytes) -> None:
    """Destroy the key under `label` and make another there, sensitive and never
    extractable, with the same ``CKA_ID``: what the PIN allows."""
    provider.destroy_key(label)
    plant_secret_key(provider, kind, label, key_id)


def _p256_pair(session: Any, label: str, key_id: bytes, *, public_on_token: bool) -> Any:
    """A P-256 pair made under `label` and ``CKA_ID`` `key_id`, its private half kept
    secret like ours; returns the public half."""
    params = session.create_domain_parameters(
        KeyType.EC,
        {Attribute.EC_PARAMS: encode_named_curve_parameters("1.2.840.10045.3.1.7")},
        local=True,
    )
    private, public = pair_templates(
        private={**KEPT_SECRET, Attribute.SIGN: True},
        public={Attribute.TOKEN: public_on_token, Attribute.VERIFY: True},
    )
    made, _private = params.generate_keypair(
        id=key_id, label=label, store=True, public_template=public, private_template=private
    )
    return made


def _substitute_private_half(provider: HSMProvider, label: str, key_id: bytes) -> None:
    """Destroy only the private half of EC pair `label` and make another private key
    there with the same ``CKA_ID``; our public half stays."""

    def plant(session: Any) -> None:
        for obj in session.get_objects(
            {Attribute.LABEL: label, Attribute.CLASS: ObjectClass.PRIVATE_KEY}
        ):
            obj.destroy()
        made = _p256_pair(session, label, key_id, public_on_token=False)
        made.destroy()  # a session object: our public half stays the only one

    provider._run(plant, retry=False)


def _refused(exc: BaseException) -> bool:
    return isinstance(exc, CofreError) and exc.code == "hsm_key_unregistered"


def test_a_card_is_never_fingerprinted_under_a_substitute(
    vault: VaultService, rotation_provider: HSMProvider, registered_next: Any
) -> None:
    label, key_id = registered_next(KeyKind.FINGERPRINT)
    pan = Pan(card_number("411111", 3838))
    first = vault.tokenize(PAYMENTS, TokenizeRequest(pan, "pan_bin6_last4"))
    _substitute_secret(rotation_provider, KeyKind.FINGERPRINT, label, key_id)
    # Within the second the fingerprint key list is cached (`vault._fingerprints`).
    with pytest.raises(CofreError) as refused:
        again = vault.tokenize(PAYMENTS, TokenizeRequest(pan, "pan_bin6_last4"))
        same = again.token == first.token
        pytest.fail(f"tokenized again under a substitute (the same token: {same})")
    assert _refused(refused.value), refused.value


def test_a_data_key_is_never_wrapped_under_a_substitute_kek(
    vault: VaultService, rotation_provider: HSMProvider, registered_next: Any
) -> None:
    label, key_id = registered_next(KeyKind.KEK)
    rotation_provider.generate_wrapped_key(label)  # found and cached: ours
    _substitute_secret(rotation_provider, KeyKind.KEK, label, key_id)
    with pytest.raises(CofreError) as refused:
        wrapped = rotation_provider.generate_wrapped_key(label)
        pytest.fail(f"a data key wrapped under a substitute of {label} ({len(wrapped.wrapped)} B)")
    assert _refused(refused.value), refused.value


def test_no_head_is_signed_by_a_substitute_private_half(
    vault: VaultService, engine: Engine, rotation_provider: HSMProvider, registered_next: Any
) -> None:
    label, key_id = registered_next(KeyKind.AUDIT)
    signer = HSMTreeHeadSigner(rotation_provider, registry=vault.keyring.registry, engine=engine)
    assert signer.key_id == label
    public = serialization.load_pem_public_key(rotation_provider.public_key_pem(label))
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signer.sign(b"head 1"), b"head 1", ec.ECDSA(hashes.SHA256()))
    _substitute_private_half(rotation_provider, label, key_id)
    # The registry's listing sees one pair with the recorded ID and public point.
    assert label in vault.keyring.registry.in_force()
    with pytest.raises(CofreError) as refused:
        signature = signer.sign(b"head 2")
        try:
            public.verify(signature, b"head 2", ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            pytest.fail("a head signed by a substitute of our private half")
        pytest.fail("signed by our key, which is destroyed")
    assert _refused(refused.value), refused.value


def test_the_published_key_is_never_a_substitute_pair(
    vault: VaultService, rotation_provider: HSMProvider, registered_next: Any
) -> None:
    """Both halves replaced, same label and ``CKA_ID``: `cofre audit vkey`, the evidence
    bundle's key and the handover anchors read the public half by label."""
    label, key_id = registered_next(KeyKind.AUDIT)
    ours = rotation_provider.public_key_pem(label)
    rotation_provider.destroy_key(label)

    def plant(session: Any) -> None:
        _p256_pair(session, label, key_id, public_on_token=True)

    rotation_provider._run(plant, retry=False)
    with pytest.raises(CofreError) as refused:
        pem = rotation_provider.public_key_pem(label)
        pytest.fail(f"published a substitute's key (ours: {pem == ours})")
    assert _refused(refused.value), refused.value
    with pytest.raises(CofreError) as refused:
        rotation_provider.sign(label, b"head")
    assert _refused(refused.value), refused.value
