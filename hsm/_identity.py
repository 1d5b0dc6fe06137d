"""Whether a key found by its label is the key Cofre made and recorded under it.

IN PCI SCOPE: reads attributes of keys and signs a random digest, never a key's value.

A label is whatever the holder of the crypto-user PIN writes: they can destroy (or, where
the token lets them, relabel) the key Cofre made and make another under its label,
sensitive and never extractable, with the same ``CKA_ID`` (an ID is its maker's choice).
`hsm.session` therefore checks every key it finds by label, once per pooled session and
key (found keys are cached with their session), in one attribute read:

- one that is or was readable or extractable is refused (`HSMOperationFailed`, session
  37): its maker can read its value;
- when the key registry has recorded the label (`TokenSession.pin_key_identities`), the
  key's ``CKA_ID`` and what identifies its material must be the record's, or the key is
  refused (`HSMKeyNotRegistered`, ``hsm_key_unregistered``). For a secret key that is
  the token-computed check value (``CKA_CHECK_VALUE``: SoftHSM2 refuses one given in a
  template or set afterwards, so a substitute cannot carry ours); for an EC key pair the
  SHA-256 of the public point, and the private half must sign a random digest that
  verifies under that point (`prove_pair`), since a private key has neither.

Until session 38 only the registry's listing compared identities (up to a second per
node), and it cannot see a private half replaced under our public one: the audit
signer, which resolves its label only when the handovers change, signed every later
head with the substitute (tests/vault/test_cka38_substitute_keys.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11.util.ec import encode_ecdsa_signature

from hsm._describe import KEPT_IN, MUST_REPORT, identity_of, read_attributes
from hsm.errors import HSMKeyNotRegistered, HSMOperationFailed

# A registered label's record: (``CKA_ID`` in base64, check value), as the key registry
# writes them (`vault.key_registry.KeyIdentity`).
Pin = tuple[str | None, str | None]
Pins = Mapping[str, Pin]

# What one read of a found key asks for, by its class: what says whether it can leave
# the token, and what identifies it.
_READ: Final[dict[ObjectClass, tuple[Attribute, ...]]] = {
    ObjectClass.SECRET_KEY: (*KEPT_IN, Attribute.ID, Attribute.CHECK_VALUE),
    ObjectClass.PRIVATE_KEY: (*KEPT_IN, Attribute.ID),
    ObjectClass.PUBLIC_KEY: (Attribute.ID, Attribute.EC_POINT),
}


# What identifies a key of each class, which a token that made it reports.
_IDENTIFIED_BY: Final[dict[ObjectClass, tuple[Attribute, ...]]] = {
    ObjectClass.SECRET_KEY: (Attribute.CHECK_VALUE,),
    ObjectClass.PUBLIC_KEY: (Attribute.EC_POINT,),
}


def check_found(obj: Any, label: str, object_class: ObjectClass, pin: Pin | None) -> None:
    """Return when key `obj`, found under `label`, may be used: kept in the token, and
    (with a `pin`) the recorded key. Raises `HSMOperationFailed` for a key that can
    leave the token, `HSMKeyNotRegistered` for another key than the record's. One
    attribute read; none for a public key with no pin."""
    if object_class == ObjectClass.PUBLIC_KEY and pin is None:
        return
    # What the token must report, missing, is a throttled read: the HSM busy
    # (`hsm._describe._AttributesUnread`, retried), never a key used unchecked.
    required = MUST_REPORT.get(object_class, ())
    if pin is not None and pin[0] is not None:
        required += (Attribute.ID,)
    if pin is not None and pin[1] is not None:
        required += _IDENTIFIED_BY.get(object_class, ())
    found = read_attributes(obj, _READ[object_class], required)
    if object_class != ObjectClass.PUBLIC_KEY:
        _refuse_a_key_that_can_leave(found, label)
    if pin is None:
        return
    key_id, check = identity_of(found, object_class)
    if key_id != pin[0] or (object_class != ObjectClass.PRIVATE_KEY and check != pin[1]):
        raise HSMKeyNotRegistered(
            f"the key labelled {label!r} is not the one the key registry records under that "
            "label (another CKA_ID or check value: a substitute), refused"
        )


def prove_pair(private: Any, public: Any, label: str) -> None:
    """Return when private key `private` signs a random digest that verifies under the
    public point of `public` (already checked against the registry's record). Raises
    `HSMKeyNotRegistered` otherwise: a private half replaced under our public one."""
    point = read_attributes(public, (Attribute.EC_POINT,)).get(Attribute.EC_POINT)
    digest = secrets.token_bytes(32)
    signature = encode_ecdsa_signature(private.sign(digest, mechanism=Mechanism.ECDSA))
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _raw_point(point))
        key.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except (InvalidSignature, ValueError):
        raise HSMKeyNotRegistered(
            f"the private key labelled {label!r} does not sign for the public key the key "
            "registry records under that label (a substitute), refused"
        ) from None


def _raw_point(point: Any) -> bytes:
    """The uncompressed P-256 point in ``CKA_EC_POINT`` (a DER OCTET STRING, or the bare
    point as some tokens answer)."""
    data = bytes(point or b"")
    if len(data) == 67 and data[:2] == b"\x04\x41":
        return data[2:]
    return data


def _refuse_a_key_that_can_leave(found: dict[Attribute, Any], label: str) -> None:
    """Raise `HSMOperationFailed` when the key whose attributes are `found` is, or ever
    was, readable or extractable: every key Cofre looks up by label it made sensitive
    and never extractable, so such a key was made or imported with the PIN outside
    Cofre, and stands where Cofre's was (destroyed since). Until session 37 it was used
    at once (an HMAC of cards, a wrap of a data key under a key its maker can read)
    until the key registry's next listing noticed it. An attribute the token does not
    report counts as refused only for the two PKCS#11 requires
    (`vault.key_registry.can_leave_the_token` says the same of listings)."""
    if (
        found.get(Attribute.SENSITIVE) is not True
        or found.get(Attribute.EXTRACTABLE) is not False
        or found.get(Attribute.ALWAYS_SENSITIVE) is False
        or found.get(Attribute.NEVER_EXTRACTABLE) is False
    ):
        raise HSMOperationFailed(
            f"the key labelled {label!r} can leave the token (readable or extractable, "
            "now or once): not Cofre's, refused"
        )
