"""What the token says about one key object, read in one request (`hsm.provider`'s
`KeyInfo`s).

IN PCI SCOPE: reads attributes of keys, never a key's value.

AWS CloudHSM Client SDK 5 sends a request to the cluster for every
``C_GetAttributeValue``, whatever the number of attributes in its template, and caches
nothing; AWS's advice is to ask for every attribute in one template
(pkcs11-attributes-retrieve.html). python-pkcs11's ``obj[attribute]`` is two calls per
attribute (the length, then the value): a key's twelve attributes took 24 round trips,
a listing of the token (every readiness check, each node's fingerprint key list once a
second) about 24 per key (session 37, tests/hsm/test_hsm37_key_attributes.py counts
them through the shim). ``get_attributes`` asks for all of them in two calls. A token
that answers a bulk read wrongly is read one attribute at a time, as python-pkcs11
itself falls back when it sorts a found object into its classes.

A throttled read (SDK 5 answers ``CKR_DEVICE_ERROR``, AWS ki-pkcs11-15) can come back
with no error and attributes missing: python-pkcs11 0.10.1 overwrites a read's length
query's return code with its value query's, and when the read that sorts a found object
into its classes fails it skips what failed, so a key came back a bare object (read
without ``CKA_SENSITIVE``, ``CKA_EXTRACTABLE`` and its check value). Until hsm38b that
key was refused as one that "can leave the token" or as not the registry's (fail closed,
but naming a planted key where the HSM was busy, and not retried). Now an attribute the
token must report that comes back missing raises `_AttributesUnread`, which the pool
treats as the busy HSM it is (`hsm._pool.BUSY_ERRORS`: the call retried once on a fresh
session, then ``503 hsm_unavailable``); the key is never used on that read.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Final

import pkcs11.exceptions as p11e
from pkcs11 import Attribute, KeyType, ObjectClass, PrivateKey, PublicKey, SecretKey

from hsm.models import KeyInfo

_COMMON: Final = (
    Attribute.CLASS,
    Attribute.KEY_TYPE,
    Attribute.ID,
    Attribute.LABEL,
    Attribute.TOKEN,
    Attribute.LOCAL,
)
# What says whether a key's value can leave the token (`hsm.session` checks them on
# every key it finds by label, in one read).
KEPT_IN: Final = (
    Attribute.SENSITIVE,
    Attribute.EXTRACTABLE,
    Attribute.ALWAYS_SENSITIVE,
    Attribute.NEVER_EXTRACTABLE,
)
# By python-pkcs11's class of the object (sorted by its class when it was found), the
# attributes `describe` reads: each one PKCS#11 defines for that class.
_BY_CLASS: Final[tuple[tuple[type, tuple[Attribute, ...]], ...]] = (
    (SecretKey, (*_COMMON, *KEPT_IN, Attribute.VALUE_LEN, Attribute.CHECK_VALUE)),
    (PrivateKey, (*_COMMON, *KEPT_IN)),
    (PublicKey, (*_COMMON, Attribute.EC_POINT)),
)


class _AttributesUnread(p11e.FunctionFailed):
    """An attribute the token must report on a key came back missing, with no error: a
    throttled read (module docstring). Busy, as ``CKR_FUNCTION_FAILED`` is."""


def read_attributes(
    obj: Any, wanted: tuple[Attribute, ...], required: tuple[Attribute, ...] = ()
) -> dict[Attribute, Any]:
    """The attributes of `wanted` that key `obj` has (one read whatever their number);
    one the token does not report, or keeps secret, is left out. Raises
    `_AttributesUnread` when one of `required` (which the token must report) is."""
    try:
        found = dict(obj.get_attributes(list(wanted)))
    except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive, p11e.ArgumentsBad):
        found = {}
        for attribute in wanted:
            try:
                found[attribute] = obj[attribute]
            except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive):
                continue
    if any(attribute not in found for attribute in required):
        raise _AttributesUnread()
    return found


# What PKCS#11 requires a token to report on a key of each class, of `KEPT_IN`.
MUST_REPORT: Final[dict[ObjectClass, tuple[Attribute, ...]]] = {
    ObjectClass.SECRET_KEY: (Attribute.SENSITIVE, Attribute.EXTRACTABLE),
    ObjectClass.PRIVATE_KEY: (Attribute.SENSITIVE, Attribute.EXTRACTABLE),
}
_CLASS_OF: Final[dict[ObjectClass, type]] = {
    ObjectClass.SECRET_KEY: SecretKey,
    ObjectClass.PRIVATE_KEY: PrivateKey,
    ObjectClass.PUBLIC_KEY: PublicKey,
}


def describe(obj: Any) -> KeyInfo:
    """`KeyInfo` of key object `obj`, from one read of its attributes."""
    wanted = next((names for kind, names in _BY_CLASS if isinstance(obj, kind)), _COMMON)
    found = read_attributes(obj, wanted, (Attribute.CLASS, Attribute.KEY_TYPE))
    object_class = ObjectClass(found[Attribute.CLASS])
    kind = _CLASS_OF.get(object_class)
    if kind is not None and not isinstance(obj, kind):
        # python-pkcs11's read that sorted it into its class failed: read unsorted,
        # without what says whether it can leave the token (module docstring).
        raise _AttributesUnread()
    if any(attribute not in found for attribute in MUST_REPORT.get(object_class, ())):
        raise _AttributesUnread()
    key_type = KeyType(found[Attribute.KEY_TYPE])
    bits: int | None = None
    if key_type in (KeyType.AES, KeyType.GENERIC_SECRET):
        length = found.get(Attribute.VALUE_LEN)
        bits = None if length is None else int(length) * 8
    elif key_type == KeyType.EC:
        bits = 256
    kept: dict[Attribute, Any] = {}
    if object_class != ObjectClass.PUBLIC_KEY:
        kept = {attribute: found.get(attribute) for attribute in KEPT_IN}
    key_id, check = identity_of(found, object_class)
    return KeyInfo(
        key_id=key_id,
        key_check=check,
        label=str(found.get(Attribute.LABEL) or ""),
        object_class=object_class.name,
        key_type=key_type.name,
        key_bits=bits,
        token=bool(found.get(Attribute.TOKEN)),
        sensitive=kept.get(Attribute.SENSITIVE),
        extractable=kept.get(Attribute.EXTRACTABLE),
        always_sensitive=kept.get(Attribute.ALWAYS_SENSITIVE),
        never_extractable=kept.get(Attribute.NEVER_EXTRACTABLE),
        local=found.get(Attribute.LOCAL),
    )


def identity_of(
    found: dict[Attribute, Any], object_class: ObjectClass
) -> tuple[str | None, str | None]:
    """The ``CKA_ID`` (base64) and check value in a key's attributes `found`, as the key
    registry records them: the token's ``CKA_CHECK_VALUE`` of a secret key, the SHA-256
    of an EC public key's point; ``None`` for what `found` lacks."""
    key_id = found.get(Attribute.ID)
    check: str | None = None
    if object_class == ObjectClass.SECRET_KEY:
        value = found.get(Attribute.CHECK_VALUE)
        check = None if not value else "kcv:" + bytes(value).hex()
    elif object_class == ObjectClass.PUBLIC_KEY:
        point = found.get(Attribute.EC_POINT)
        if point:
            digest = hashlib.sha256(bytes(point)).digest()
            # Base64, not hex: 64 hex digits often hold a 12-digit run, which the audit
            # log's PAN masker would rewrite.
            check = "ec-point-sha256:" + base64.b64encode(digest).decode()
    return (None if key_id is None else base64.b64encode(bytes(key_id)).decode()), check
