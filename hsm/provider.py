"""The PKCS#11 provider: Cofre's key operations on one token.

IN PCI SCOPE, holds keys. With `hsm.session` (sessions, recovery, error translation) this
is the only code that calls python-pkcs11. It returns bytes and the small frozen records
of `hsm.models`; it raises only `hsm.errors` classes.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any, Final

import pkcs11.exceptions as p11e
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import (
    encode_ec_public_key,
    encode_ecdsa_signature,
    encode_named_curve_parameters,
)

from cofre.settings import HSMSettings
from hsm._describe import describe
from hsm._hmac import HmacOperations
from hsm._identity import check_found, prove_pair
from hsm.errors import (
    HSMKeyNotFound,
    HSMOperationFailed,
    HSMUnavailable,
)
from hsm.mechanisms import (
    KEPT_SECRET,
    WrapAlgorithm,
    WrapMechanisms,
    new_key_id,
    pair_templates,
    resolve_wrap_mechanisms,
    secret_key_template,
    usage_template,
)
from hsm.models import KeyInfo, TokenInfo, WrappedKey

__all__ = [
    "REQUIRED_MECHANISMS",
    "HSMProvider",
    "KeyInfo",
    "TokenInfo",
    "WrapAlgorithm",
    "WrappedKey",
    "provider_from_settings",
    "wipe",
]

_P256_OID: Final = "1.2.840.10045.3.1.7"


# How long a readiness check's proof of a key pair stands for the same key objects
# (`HSMProvider.prove_pair_for_check`): one signature a minute, not one per probe.
_INTERVAL: Final = 60.0

# The mechanisms Cofre calls, by name, for `cofre hsm status` (key wrap is resolved
# apart, `hsm.mechanisms`). AES_GCM seals security codes in the token (`hsm.aead`).
REQUIRED_MECHANISMS: Final[dict[str, int]] = {
    "AES_KEY_GEN": int(Mechanism.AES_KEY_GEN),
    "GENERIC_SECRET_KEY_GEN": int(Mechanism.GENERIC_SECRET_KEY_GEN),
    "SHA256_HMAC": int(Mechanism.SHA256_HMAC),
    "EC_KEY_PAIR_GEN": int(Mechanism.EC_KEY_PAIR_GEN),
    "ECDSA": int(Mechanism.ECDSA),
    "AES_GCM": int(Mechanism.AES_GCM),
}


class HSMProvider(HmacOperations):
    """A PKCS#11 token reached through one library, logged in as the crypto user.

    Construction touches nothing; the first call opens the library and logs in. Every
    public method raises `HSMUnavailable` (or its subclass `HSMAuthFailed`) when the
    token cannot be reached, and the other `hsm.errors` classes as documented.
    """

    # The last key listing a readiness check made (`list_keys_for_check`).
    _checked_listing: list[KeyInfo] | None = None
    # Each pair a readiness check proved: its objects' handles, record, and when.
    _proven_pairs: dict[str, tuple[tuple[int, int, object], float]] | None = None

    # ------------------------------------------------------------------ inspection
    def health_check(self) -> None:
        """Return when the token answers a trivial call; raise `HSMUnavailable` otherwise,
        at once while the library is not loaded or is being loaded or re-initialised
        (`check_bounded`: the check leaves that work to a background thread)."""
        self.check_bounded(lambda session: session.generate_random(64), name="health")

    def token_info(self) -> TokenInfo:
        def read(session: Any) -> TokenInfo:
            token = session.token
            major, minor = self._lib.library_version
            return TokenInfo(
                library=str(self._library_path),
                library_version=f"{major}.{minor}",
                token_label=token.label,
                manufacturer=token.manufacturer_id,
                model=token.model,
                serial=token.serial.decode("ascii", "replace").strip(),
            )

        return self._run(read)

    def _offered(self, session: Any) -> frozenset[int]:
        if self._mechanisms is None:
            self._mechanisms = frozenset(int(m) for m in session.token.slot.get_mechanisms())
        return self._mechanisms

    def _wrap_mechanisms(self, session: Any) -> WrapMechanisms:
        # Resolved from the token's own mechanism list when the session opens, so the
        # same code finds SoftHSM2's standard numbers and CloudHSM's vendor numbers.
        if self._wrap is None:
            self._wrap = resolve_wrap_mechanisms(self._offered(session))
        return self._wrap

    def mechanism_ids(self) -> frozenset[int]:
        """Return the mechanism numbers the token offers (asked once per session)."""
        return self._run(self._offered)

    def wrap_algorithm(self) -> WrapAlgorithm:
        """Return the key-wrap algorithm new wraps use: RFC 5649, else RFC 3394.

        Raises `HSMMechanismUnsupported` when the token offers neither.
        """
        return self._run(lambda session: self._wrap_mechanisms(session).preferred)

    def wrap_mechanism_name(self, algorithm: str) -> str:
        """Return the name of the token's mechanism for `algorithm` (for status output)."""
        return self._run(lambda session: self._wrap_mechanisms(session).mechanism(algorithm).name)

    def list_keys(self) -> list[KeyInfo]:
        """Return every key object on the token, Cofre's or not, sorted by label."""

        return self._run(self._listing)

    def _listing(self, session: Any) -> list[KeyInfo]:
        infos = [
            self._describe(obj)
            for cls in (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)
            # Token objects only: a batch's short-lived session copies are not keys.
            for obj in session.get_objects({Attribute.CLASS: cls, Attribute.TOKEN: True})
        ]
        # Out of descriptors, SoftHSM lists no key and raises nothing (session 40).
        self._open_files.refuse_if_exhausted()
        return sorted(infos, key=lambda info: (info.label, info.object_class))

    def list_keys_for_check(self) -> list[KeyInfo]:
        """`list_keys` for a readiness check (the key registry's), bounded as
        `health_check` is (`check_bounded`): raises `HSMUnavailable` rather than wait on
        a busy pool or a hung call (session 35; it waited with no bound before). When
        every session is busy with calls that answer, the last listing a check made
        (the next check that gets a session lists again); none yet: `HSMUnavailable`."""
        listed = self.check_bounded(self._listing, name="key listing")
        if isinstance(listed, list):
            self._checked_listing = listed
            return listed
        if self._checked_listing is None:
            raise HSMUnavailable("every HSM session is busy: the token's keys not listed yet")
        return list(self._checked_listing)

    def prove_pair_for_check(self, label: str) -> None:
        """Return when the private half of EC key pair `label` signs for its public half
        (`hsm._identity.prove_pair`), each half checked against the key registry's record
        as a lookup checks it, for a readiness check (bounded as `list_keys_for_check`;
        every session busy with calls that answer: returns). The listing cannot see a
        private half replaced under our public one (same label, ``CKA_ID`` and point):
        until hsm38b ``/readyz`` stayed ready and only the next head's signing failed.
        Readiness runs often: a proof of the same two key objects under the same record
        is not repeated within a minute (`_INTERVAL`). Raises
        `HSMKeyNotRegistered` (a substitute), `HSMKeyNotFound`, `HSMUnavailable`."""

        def prove(session: Any) -> None:
            pin = self._pins.get(label)
            halves = []
            for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                try:
                    halves.append(session.get_key(object_class=object_class, label=label))
                except p11e.NoSuchKey:
                    raise HSMKeyNotFound(f"no {object_class.name} key labelled {label!r}") from None
                except p11e.MultipleObjectsReturned:
                    raise HSMOperationFailed(f"more than one key labelled {label!r}") from None
            private, public = halves
            seen = (int(private.handle), int(public.handle), pin)
            proven = self._proven_pairs = self._proven_pairs or {}
            last = proven.get(label)
            if last is not None and last[0] == seen and time.monotonic() - last[1] < _INTERVAL:
                return
            check_found(private, label, ObjectClass.PRIVATE_KEY, pin)
            check_found(public, label, ObjectClass.PUBLIC_KEY, pin)
            self._prove_signs(private, public, label)
            proven[label] = (seen, time.monotonic())

        self.check_bounded(prove, name="key pair proof")

    def _prove_signs(self, private: Any, public: Any, label: str) -> None:
        prove_pair(private, public, label)

    def describe_key(self, label: str) -> KeyInfo:
        """Return the attributes of the secret or private key `label`.

        Raises `HSMKeyNotFound`.
        """

        def read(session: Any) -> KeyInfo:
            # Looked up here, not through `_find`: describing a key is not using it, so
            # one that can leave the token is described (the key registry and a
            # ceremony's "label taken" check must see it), never cached for use.
            for object_class in (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY):
                try:
                    found = session.get_key(object_class=object_class, label=label)
                except p11e.NoSuchKey:
                    continue
                except p11e.MultipleObjectsReturned:
                    raise HSMOperationFailed(f"more than one key labelled {label!r}") from None
                return self._describe(found)
            raise HSMKeyNotFound(f"no SECRET_KEY or PRIVATE_KEY key labelled {label!r}")

        return self._run(read)

    def has_key(self, label: str) -> bool:
        try:
            self.describe_key(label)
        except HSMKeyNotFound:
            return False
        return True

    def _describe_key(self, obj: Any) -> KeyInfo:
        return self._describe(obj)

    @staticmethod
    def _describe(obj: Any) -> KeyInfo:
        # One read of every attribute (`hsm._describe`: one request per call on SDK 5).
        return describe(obj)

    # ------------------------------------------------------------------ key generation
    def generate_kek(self, label: str) -> KeyInfo:
        """Create an AES-256 key-encryption key on the token: sensitive, never extractable,
        usable only to wrap and unwrap. Returns its `KeyInfo`.

        Raises `HSMOperationFailed` when `label` is taken.
        """

        return self._generate_aes(label, {Attribute.WRAP, Attribute.UNWRAP})

    def generate_hmac_key(self, label: str) -> KeyInfo:
        """Create a 256-bit HMAC-SHA256 key on the token: sensitive, never extractable.

        Raises `HSMOperationFailed` when `label` is taken.
        """

        def generate(session: Any, key_id: bytes) -> None:
            # SIGN only: Cofre never verifies a fingerprint in the token (until session
            # 37 the key also carried CKA_VERIFY).
            self._narrowest_first(
                KeyType.GENERIC_SECRET,
                lambda strict: session.generate_key(
                    KeyType.GENERIC_SECRET,
                    256,
                    id=key_id,
                    label=label,
                    store=True,
                    mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
                    template=secret_key_template(
                        KeyType.GENERIC_SECRET, {Attribute.SIGN}, strict=strict
                    ),
                ),
            )

        return self._create_key(label, generate)

    def generate_signing_key(self, label: str) -> KeyInfo:
        """Create an EC P-256 key pair on the token; the private half is sensitive and never
        extractable, the public half (same label) is exportable with `public_key_pem`.

        Raises `HSMOperationFailed` when `label` is taken.
        """

        def generate(session: Any, key_id: bytes) -> None:
            params = session.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters(_P256_OID)},
                local=True,
            )

            def make(strict: bool) -> None:
                private_template, public_template = pair_templates(
                    private={**KEPT_SECRET, Attribute.SIGN: True},
                    public={Attribute.TOKEN: True, Attribute.VERIFY: True},
                    strict=strict,
                )
                # Both halves share one fresh CKA_ID, as PKCS#11 convention pairs them.
                params.generate_keypair(
                    id=key_id,
                    label=label,
                    store=True,
                    public_template=public_template,
                    private_template=private_template,
                )

            self._narrowest_first(KeyType.EC, make)

        return self._create_key(label, generate)

    # Key types whose strict template the token refused (a usage flag the type does not
    # support: AWS CloudHSM SDK 5 answers CKR_TEMPLATE_INCONSISTENT, attr-errors.html):
    # their templates then name only the supported flags, for the life of the provider.
    _loose_types: frozenset[KeyType] = frozenset()

    def _narrowest_first(self, key_type: KeyType, make: Callable[[bool], object]) -> None:
        """Run `make(True)`, a creation of a `key_type` key whose template sends every
        usage flag, false unless used; on a token that refuses a flag the key type
        lacks (`_TEMPLATE_REFUSED`), `make(False)`, the flags it supports only (a refused
        template made nothing, so this is no second creation). Why: a flag left out
        takes the token's default, and SoftHSM2's is true: the fingerprint key could
        encrypt, decrypt, wrap and unwrap, the audit key decrypt and unwrap (session 37,
        tests/hsm/test_hsm37_key_attributes.py)."""
        if key_type not in self._loose_types:
            try:
                make(True)
            except _TEMPLATE_REFUSED:
                self._loose_types = self._loose_types | {key_type}
            else:
                return
        make(False)

    def destroy_key(self, label: str) -> None:
        """Destroy every object labelled `label` on the token (both halves of a key pair).

        Raises `HSMKeyNotFound` when there is none.
        """

        def destroy(session: Any) -> None:
            objects = list(session.get_objects({Attribute.LABEL: label}))
            if not objects:
                raise HSMKeyNotFound(f"no key labelled {label!r}")
            for obj in objects:
                obj.destroy()
            self._forget_keys()

        self._run(destroy)

    # ------------------------------------------------------------------ data keys
    def generate_wrapped_key(self, kek_label: str) -> WrappedKey:
        """Generate an AES-256 data key inside the token and return it wrapped under
        `kek_label`; the clear key exists only as a session object, destroyed at once.

        Raises `HSMKeyNotFound`, `HSMMechanismUnsupported`.
        """

        def generate(session: Any) -> WrappedKey:
            mechanisms = self._wrap_mechanisms(session)
            algorithm = mechanisms.preferred
            kek = self._find_secret(session, kek_label)
            data_key = session.generate_key(
                KeyType.AES,
                256,
                id=(key_id := new_key_id()),
                label=_session_label(key_id),
                store=False,
                template=_DATA_KEY_TEMPLATES[False],
            )
            try:
                wrapped = kek.wrap_key(data_key, mechanism=mechanisms.mechanism(algorithm))
            finally:
                data_key.destroy()
            return WrappedKey(wrapped=bytes(wrapped), algorithm=algorithm, kek_label=kek_label)

        return self._run(generate, name="wrap")

    def _unwrap_object(self, session: Any, wrapped: WrappedKey, *, readable: bool) -> Any:
        mechanism = self._wrap_mechanisms(session).mechanism(wrapped.algorithm)
        kek = self._find_secret(session, wrapped.kek_label)
        try:
            return kek.unwrap_key(
                ObjectClass.SECRET_KEY,
                KeyType.AES,
                wrapped.wrapped,
                id=(key_id := new_key_id()),
                label=_session_label(key_id),
                mechanism=mechanism,
                store=False,
                template=_DATA_KEY_TEMPLATES[readable],
            )
        except (
            p11e.WrappedKeyInvalid,
            p11e.WrappedKeyLenRange,
            p11e.EncryptedDataInvalid,
            p11e.DataInvalid,
            p11e.DataLenRange,
        ):
            raise HSMOperationFailed(
                f"the wrapped key does not unwrap under {wrapped.kek_label!r}"
            ) from None
        except p11e.GeneralError:
            # SoftHSM2 answers CKR_GENERAL_ERROR when an RFC 5649 integrity check fails,
            # which is also what a dying token says. Ask the session: if it still answers,
            # the wrapped bytes were bad; if not, `_run` recovers the session.
            session.generate_random(64)
            raise HSMOperationFailed(
                f"the wrapped key does not unwrap under {wrapped.kek_label!r}"
            ) from None

    def unwrap_key(self, wrapped: WrappedKey) -> bytearray:
        """Unwrap a data key into process memory and return its bytes.

        The caller owns the `bytearray` and must wipe it (`wipe`) when done.
        Raises `HSMKeyNotFound` (KEK gone), `HSMOperationFailed` (not a key wrapped by it).
        """

        def unwrap(session: Any) -> bytearray:
            obj = self._unwrap_object(session, wrapped, readable=True)
            try:
                return bytearray(obj[Attribute.VALUE])
            finally:
                obj.destroy()

        return self._run(unwrap, name="unwrap")

    def rewrap_key(self, wrapped: WrappedKey, new_kek_label: str) -> WrappedKey:
        """Return `wrapped`'s key wrapped under `new_kek_label`, inside the token: the clear
        key never reaches process memory. Used by KEK rotation.
        """

        def rewrap(session: Any) -> WrappedKey:
            mechanisms = self._wrap_mechanisms(session)
            algorithm = mechanisms.preferred
            new_kek = self._find_secret(session, new_kek_label)
            obj = self._unwrap_object(session, wrapped, readable=False)
            try:
                data = new_kek.wrap_key(obj, mechanism=mechanisms.mechanism(algorithm))
            finally:
                obj.destroy()
            return WrappedKey(wrapped=bytes(data), algorithm=algorithm, kek_label=new_kek_label)

        return self._run(rewrap)

    def export_key(self, label: str, *, wrapping_label: str | None = None) -> bytes:
        """Try to take key `label` out of the token: its value, or wrapped under
        `wrapping_label`. Cofre never calls this; it exists so that the tests
        (tests/hsm/test_provider.py) can show the token refusing for every Cofre key.

        Raises `HSMKeyNotExtractable` for a sensitive or non-extractable key.
        """

        def export(session: Any) -> bytes:
            key = self._find_secret(session, label)
            if wrapping_label is None:
                return bytes(key[Attribute.VALUE])
            wrapper = self._find_secret(session, wrapping_label)
            mechanisms = self._wrap_mechanisms(session)
            return bytes(
                wrapper.wrap_key(key, mechanism=mechanisms.mechanism(mechanisms.preferred))
            )

        return self._run(export)

    # ------------------------------------------------------------------ HMAC and signing
    def sign(self, label: str, data: bytes) -> bytes:
        """Return a DER-encoded ECDSA P-256 signature over SHA-256(`data`).

        The digest is computed here and the token signs it with raw ``CKM_ECDSA``: SoftHSM2
        has no ``CKM_ECDSA_SHA256``, and the result is the same signature either way.
        """
        digest = hashlib.sha256(data).digest()

        def sign(session: Any) -> bytes:
            key = self._find(session, label, ObjectClass.PRIVATE_KEY)
            raw = key.sign(digest, mechanism=Mechanism.ECDSA)
            return bytes(encode_ecdsa_signature(raw))

        return self._run(sign, name="sign")

    def public_key_pem(self, label: str) -> bytes:
        """Return the PEM SubjectPublicKeyInfo of the public key `label`."""

        def read(session: Any) -> bytes:
            public = self._find(session, label, ObjectClass.PUBLIC_KEY)
            der = encode_ec_public_key(public)
            return serialization.load_der_public_key(der).public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )

        return self._run(read)


# How a token refuses a template naming a flag the key type lacks: attr-errors.html gives
# CKR_TEMPLATE_INCONSISTENT; the other two are PKCS#11's for an attribute or value the
# token does not take, accepted too so that a cluster answering either still makes keys.
_TEMPLATE_REFUSED: Final = (
    p11e.TemplateInconsistent,
    p11e.AttributeTypeInvalid,
    p11e.AttributeValueInvalid,
)


def _session_label(key_id: bytes) -> str:
    # Session objects get a label and an ID too: CloudHSM has refused empty ones. The
    # label takes its random part from the (random) ID: one read of the system's random
    # source per data key instead of two.
    return f"cofre-tmp-{key_id[:6].hex()}"


def _data_key_template(*, readable: bool) -> dict[Attribute, Any]:
    """A data key as a session object: no usage at all (the token only wraps it, and
    unwraps it to read or rewrap it; until session 37 it could encrypt and decrypt),
    extractable so that it can be wrapped; sensitive unless `readable` (`unwrap_key`
    reads its value)."""
    return {
        **usage_template(KeyType.AES, set()),
        Attribute.TOKEN: False,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: not readable,
        Attribute.EXTRACTABLE: True,
    }


# Built once, by `readable`: python-pkcs11 copies a template before using it (its
# `merge_templates`), so these are never changed, and a data key's call is spared
# building the same dict again.
_DATA_KEY_TEMPLATES: Final[dict[bool, dict[Attribute, Any]]] = {
    readable: _data_key_template(readable=readable) for readable in (False, True)
}


def wipe(buffer: bytearray) -> None:
    """Overwrite `buffer` with zeros in place (as far as CPython lets us wipe anything)."""
    buffer[:] = bytes(len(buffer))


def provider_from_settings(settings: HSMSettings) -> HSMProvider:
    """Return a provider for the configured library, token and PIN source.

    Raises `cofre.errors.ConfigurationError` when no PIN source is configured.
    """
    return HSMProvider(
        library=settings.library,
        token_label=settings.token_label,
        pin=settings.read_pin(),
        softhsm_conf=settings.softhsm_conf,
        pool_size=settings.session_pool_size,
        key_availability_timeout=settings.key_availability_timeout_seconds,
        refuse_software=settings.refuse_software_token,
    )
