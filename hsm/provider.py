"""The PKCS#11 provider: one logged-in session to one token, shared safely by threads.

IN PCI SCOPE, holds keys. This is the only module that calls python-pkcs11. It returns
bytes and small frozen dataclasses; it raises only `hsm.errors` classes.

Concurrency. python-pkcs11 initialises the library with ``C_Initialize(NULL)``, so
SoftHSM2 runs without internal locking while python-pkcs11 releases the GIL during each
call: two threads on two sessions crash it (see shared/TOOLCHAIN.md). The provider
therefore holds **one** session and serialises every call with a lock. Measured on two
cores, two threads under a lock were no faster than one, so a larger pool would buy
nothing with SoftHSM; with CloudHSM, scale out with more vault processes, each with its
own provider (CloudHSM's client load-balances sessions across the cluster's HSMs).

Recovery. A call that fails because the session, token or library went away drops the
session, reopens it (re-initialising the library when needed) and retries once; when the
retry fails too the caller gets `HSMUnavailable`, and the next call tries again. Nothing
is cached across a reopen except the provider's configuration.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import pkcs11
import pkcs11.exceptions as p11e
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.util.ec import (
    encode_ec_public_key,
    encode_ecdsa_signature,
    encode_named_curve_parameters,
)
from pydantic import SecretStr

from cofre.settings import HSMSettings
from hsm.errors import (
    HSMAuthFailed,
    HSMError,
    HSMKeyNotExtractable,
    HSMKeyNotFound,
    HSMMechanismUnsupported,
    HSMOperationFailed,
    HSMUnavailable,
)

T = TypeVar("T")

_P256_OID: Final = "1.2.840.10045.3.1.7"

# Failures after which the session (and maybe the library) must be rebuilt.
_CONNECTION_ERRORS: Final = (
    p11e.SessionClosed,
    p11e.SessionHandleInvalid,
    p11e.DeviceRemoved,
    p11e.DeviceError,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.GeneralError,
    p11e.UserNotLoggedIn,
    p11e.ObjectHandleInvalid,
    p11e.KeyHandleInvalid,
    p11e.FunctionFailed,
    p11e.DeviceMemory,
    p11e.HostMemory,
)
_AUTH_ERRORS: Final = (
    p11e.PinIncorrect,
    p11e.PinInvalid,
    p11e.PinLenRange,
    p11e.PinLocked,
    p11e.PinExpired,
    p11e.UserPinNotInitialized,
)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What the token says about one key object. Never holds key material."""

    label: str
    object_class: str
    key_type: str
    key_bits: int | None
    token: bool
    sensitive: bool | None
    extractable: bool | None
    always_sensitive: bool | None
    never_extractable: bool | None
    local: bool | None


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A data key encrypted under a KEK that never leaves the HSM.

    `mechanism` names the wrap algorithm (``AES_KEY_WRAP_KWP``, ``AES_KEY_WRAP_PAD`` or
    ``AES_KEY_WRAP``) so that a later unwrap uses the same one whatever the token prefers
    by then.
    """

    wrapped: bytes
    mechanism: str
    kek_label: str


@dataclass(frozen=True, slots=True)
class TokenInfo:
    library: str
    library_version: str
    token_label: str
    manufacturer: str
    model: str
    serial: str


# Preference order. python-pkcs11 0.10 can pass only mechanisms its enum knows, so KWP
# (PKCS#11 v3.0) is used only once the library grows a member for it.
_WRAP_MECHANISMS: Final[dict[str, Mechanism]] = {
    name: getattr(Mechanism, name)
    for name in ("AES_KEY_WRAP_KWP", "AES_KEY_WRAP_PAD", "AES_KEY_WRAP")
    if hasattr(Mechanism, name)
}
# The mechanisms Cofre needs, by name, for `cofre hsm status`.
REQUIRED_MECHANISMS: Final[dict[str, int]] = {
    "AES_KEY_GEN": int(Mechanism.AES_KEY_GEN),
    "GENERIC_SECRET_KEY_GEN": int(Mechanism.GENERIC_SECRET_KEY_GEN),
    "SHA256_HMAC": int(Mechanism.SHA256_HMAC),
    "EC_KEY_PAIR_GEN": int(Mechanism.EC_KEY_PAIR_GEN),
    "ECDSA": int(Mechanism.ECDSA),
}


def _attr(obj: Any, attribute: Attribute) -> Any:
    try:
        return obj[attribute]
    except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive):
        return None


class HSMProvider:
    """A PKCS#11 token reached through one library, logged in as the crypto user.

    Construction touches nothing; the first call opens the library and logs in. Every
    public method raises `HSMUnavailable` (or its subclass `HSMAuthFailed`) when the
    token cannot be reached, and the other `hsm.errors` classes as documented.
    """

    def __init__(
        self,
        library: Path,
        token_label: str,
        pin: SecretStr,
        softhsm_conf: Path | None = None,
    ) -> None:
        self._library_path = library
        self._token_label = token_label
        self._pin = pin
        self._softhsm_conf = softhsm_conf
        self._lock = threading.RLock()
        self._lib: Any = None
        self._session: Any = None
        self._objects: dict[tuple[str, int], Any] = {}
        self._mechanisms: frozenset[int] | None = None
        # Called with (operation, milliseconds) after every call; the API feeds metrics.
        self.observer: Callable[[str, float], None] | None = None

    def __repr__(self) -> str:
        return f"HSMProvider(library={str(self._library_path)!r}, token={self._token_label!r})"

    # ------------------------------------------------------------------ session
    def _load_library(self) -> Any:
        if self._softhsm_conf is not None:
            # SoftHSM reads SOFTHSM2_CONF once, when python-pkcs11 first loads the library
            # in this process (it caches one library object per path).
            os.environ["SOFTHSM2_CONF"] = str(self._softhsm_conf)
        if not self._library_path.is_file():
            raise HSMUnavailable(f"PKCS#11 library not found: {self._library_path}")
        try:
            return pkcs11.lib(str(self._library_path))
        except (RuntimeError, OSError, p11e.PKCS11Error) as exc:
            raise HSMUnavailable(
                f"cannot load PKCS#11 library {self._library_path}: {type(exc).__name__}"
            ) from None

    def _open_session(self) -> Any:
        if self._lib is None:
            self._lib = self._load_library()
        try:
            token = self._lib.get_token(token_label=self._token_label)
        except p11e.NoSuchToken:
            raise HSMUnavailable(
                f"no token labelled {self._token_label!r} in {self._library_path}"
            ) from None
        except p11e.MultipleTokensReturned:
            raise HSMUnavailable(
                f"more than one token labelled {self._token_label!r}; labels must be unique"
            ) from None
        pin = self._pin.get_secret_value()
        try:
            return token.open(rw=True, user_pin=pin)
        except p11e.UserAlreadyLoggedIn:
            # Login is per application: another provider in this process already logged
            # this token in, and every session of the process shares that login.
            return token.open(rw=True)
        except _AUTH_ERRORS as exc:
            raise HSMAuthFailed(
                f"token {self._token_label!r} refused the user PIN ({type(exc).__name__})"
            ) from None

    def _drop_session(self) -> None:
        self._objects.clear()
        self._mechanisms = None
        session, self._session = self._session, None
        if session is not None:
            # A failing close means it is already gone, which is why we are dropping it.
            with contextlib.suppress(p11e.PKCS11Error):
                session.close()

    def _reinitialize(self) -> None:
        self._drop_session()
        if self._lib is not None:
            try:
                self._lib.reinitialize()
            except p11e.PKCS11Error:
                self._lib = None

    def _run(self, operation: Callable[[Any], T], *, retry: bool = True, name: str = "call") -> T:
        """Run `operation(session)` under the lock, translating every PKCS#11 error."""
        started = time.perf_counter()
        try:
            return self._run_locked(operation, retry=retry)
        finally:
            if self.observer is not None:
                self.observer(name, (time.perf_counter() - started) * 1000)

    def _run_locked(self, operation: Callable[[Any], T], *, retry: bool) -> T:
        with self._lock:
            attempts = 2 if retry else 1
            for attempt in range(1, attempts + 1):
                try:
                    if self._session is None:
                        self._session = self._open_session()
                    return operation(self._session)
                except HSMError:
                    raise
                except _AUTH_ERRORS as exc:
                    self._drop_session()
                    raise HSMAuthFailed(
                        f"token {self._token_label!r} refused the user PIN ({type(exc).__name__})"
                    ) from None
                except _CONNECTION_ERRORS as exc:
                    if attempt == 1:
                        self._drop_session()
                    else:
                        self._reinitialize()
                    if attempt == attempts:
                        raise HSMUnavailable(
                            f"token {self._token_label!r} is not reachable ({type(exc).__name__})"
                        ) from None
                except p11e.MechanismInvalid as exc:
                    raise HSMMechanismUnsupported(
                        f"token {self._token_label!r} does not support a mechanism this "
                        f"operation needs ({type(exc).__name__})"
                    ) from None
                except (p11e.AttributeSensitive, p11e.KeyUnextractable) as exc:
                    raise HSMKeyNotExtractable(
                        f"the token refused to export the key ({type(exc).__name__})"
                    ) from None
                except p11e.PKCS11Error as exc:
                    raise HSMOperationFailed(
                        f"the token refused the operation ({type(exc).__name__})"
                    ) from None
            raise AssertionError("unreachable")  # pragma: no cover

    def _find(self, session: Any, label: str, object_class: ObjectClass) -> Any:
        key = (label, int(object_class))
        cached = self._objects.get(key)
        if cached is not None:
            return cached
        try:
            obj = session.get_key(object_class=object_class, label=label)
        except p11e.NoSuchKey:
            raise HSMKeyNotFound(f"no {object_class.name} key labelled {label!r}") from None
        except p11e.MultipleObjectsReturned:
            raise HSMOperationFailed(f"more than one key labelled {label!r}") from None
        self._objects[key] = obj
        return obj

    def _find_secret(self, session: Any, label: str) -> Any:
        return self._find(session, label, ObjectClass.SECRET_KEY)

    def close(self) -> None:
        """Close the session. The provider reopens it on the next call."""
        with self._lock:
            self._drop_session()

    # ------------------------------------------------------------------ inspection
    def health_check(self) -> None:
        """Return when the token answers a trivial call; raise `HSMUnavailable` otherwise."""
        self._run(lambda session: session.generate_random(64), name="health")

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

    def mechanism_ids(self) -> frozenset[int]:
        """Return the mechanism numbers the token offers (asked once per session)."""

        def read(session: Any) -> frozenset[int]:
            if self._mechanisms is None:
                self._mechanisms = frozenset(int(m) for m in session.token.slot.get_mechanisms())
            return self._mechanisms

        return self._run(read)

    def wrap_mechanism(self) -> str:
        """Return the best AES key-wrap mechanism the token has: KWP, then PAD, then 3394.

        Raises `HSMMechanismUnsupported` when the token has none.
        """
        offered = self.mechanism_ids()
        for name, number in _WRAP_MECHANISMS.items():
            if int(number) in offered:
                return name
        raise HSMMechanismUnsupported("the token offers no AES key-wrap mechanism")

    def list_keys(self) -> list[KeyInfo]:
        """Return every key object on the token, Cofre's or not, sorted by label."""

        def read(session: Any) -> list[KeyInfo]:
            infos = [
                self._describe(obj)
                for cls in (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)
                for obj in session.get_objects({Attribute.CLASS: cls})
            ]
            return sorted(infos, key=lambda info: (info.label, info.object_class))

        return self._run(read)

    def describe_key(self, label: str) -> KeyInfo:
        """Return the attributes of the secret or private key `label`.

        Raises `HSMKeyNotFound`.
        """

        def read(session: Any) -> KeyInfo:
            try:
                return self._describe(self._find_secret(session, label))
            except HSMKeyNotFound:
                return self._describe(self._find(session, label, ObjectClass.PRIVATE_KEY))

        return self._run(read)

    def has_key(self, label: str) -> bool:
        try:
            self.describe_key(label)
        except HSMKeyNotFound:
            return False
        return True

    @staticmethod
    def _describe(obj: Any) -> KeyInfo:
        object_class = ObjectClass(obj[Attribute.CLASS])
        key_type = KeyType(obj[Attribute.KEY_TYPE])
        bits: int | None = None
        if key_type in (KeyType.AES, KeyType.GENERIC_SECRET):
            length = _attr(obj, Attribute.VALUE_LEN)
            bits = None if length is None else int(length) * 8
        elif key_type == KeyType.EC:
            bits = 256
        sensitive = extractable = always = never = None
        if object_class != ObjectClass.PUBLIC_KEY:
            sensitive = _attr(obj, Attribute.SENSITIVE)
            extractable = _attr(obj, Attribute.EXTRACTABLE)
            always = _attr(obj, Attribute.ALWAYS_SENSITIVE)
            never = _attr(obj, Attribute.NEVER_EXTRACTABLE)
        return KeyInfo(
            label=str(_attr(obj, Attribute.LABEL) or ""),
            object_class=object_class.name,
            key_type=key_type.name,
            key_bits=bits,
            token=bool(_attr(obj, Attribute.TOKEN)),
            sensitive=sensitive,
            extractable=extractable,
            always_sensitive=always,
            never_extractable=never,
            local=_attr(obj, Attribute.LOCAL),
        )

    # ------------------------------------------------------------------ key generation
    def _refuse_duplicate(self, session: Any, label: str) -> None:
        if any(True for _ in session.get_objects({Attribute.LABEL: label})):
            raise HSMOperationFailed(f"a key labelled {label!r} already exists")

    def generate_kek(self, label: str) -> KeyInfo:
        """Create an AES-256 key-encryption key on the token: sensitive, never extractable,
        usable only to wrap and unwrap. Returns its `KeyInfo`.

        Raises `HSMOperationFailed` when `label` is taken.
        """

        def generate(session: Any) -> KeyInfo:
            self._refuse_duplicate(session, label)
            key = session.generate_key(
                KeyType.AES,
                256,
                label=label,
                store=True,
                capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP,
                template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.ENCRYPT: False,
                    Attribute.DECRYPT: False,
                },
            )
            return self._describe(key)

        # Not retried: a retry after a lost reply could create the key twice.
        return self._run(generate, retry=False)

    def generate_hmac_key(self, label: str) -> KeyInfo:
        """Create a 256-bit HMAC-SHA256 key on the token: sensitive, never extractable.

        Raises `HSMOperationFailed` when `label` is taken.
        """

        def generate(session: Any) -> KeyInfo:
            self._refuse_duplicate(session, label)
            key = session.generate_key(
                KeyType.GENERIC_SECRET,
                256,
                label=label,
                store=True,
                mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                },
            )
            return self._describe(key)

        return self._run(generate, retry=False)

    def generate_signing_key(self, label: str) -> KeyInfo:
        """Create an EC P-256 key pair on the token; the private half is sensitive and never
        extractable, the public half (same label) is exportable with `public_key_pem`.

        Raises `HSMOperationFailed` when `label` is taken.
        """

        def generate(session: Any) -> KeyInfo:
            self._refuse_duplicate(session, label)
            params = session.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters(_P256_OID)},
                local=True,
            )
            _public, private = params.generate_keypair(
                label=label,
                store=True,
                public_template={Attribute.TOKEN: True, Attribute.VERIFY: True},
                private_template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.SIGN: True,
                },
            )
            return self._describe(private)

        return self._run(generate, retry=False)

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
            self._objects = {k: v for k, v in self._objects.items() if k[0] != label}

        self._run(destroy)

    # ------------------------------------------------------------------ data keys
    def generate_wrapped_key(self, kek_label: str) -> WrappedKey:
        """Generate an AES-256 data key inside the token and return it wrapped under
        `kek_label`; the clear key exists only as a session object, destroyed at once.

        Raises `HSMKeyNotFound`, `HSMMechanismUnsupported`.
        """
        mechanism = self.wrap_mechanism()

        def generate(session: Any) -> WrappedKey:
            kek = self._find_secret(session, kek_label)
            data_key = session.generate_key(
                KeyType.AES,
                256,
                store=False,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                template={
                    Attribute.TOKEN: False,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: True,
                },
            )
            try:
                wrapped = kek.wrap_key(data_key, mechanism=_WRAP_MECHANISMS[mechanism])
            finally:
                data_key.destroy()
            return WrappedKey(wrapped=bytes(wrapped), mechanism=mechanism, kek_label=kek_label)

        return self._run(generate, name="wrap")

    def _unwrap_object(self, session: Any, wrapped: WrappedKey, *, readable: bool) -> Any:
        if wrapped.mechanism not in _WRAP_MECHANISMS:
            raise HSMMechanismUnsupported(f"unknown wrap mechanism {wrapped.mechanism!r}")
        kek = self._find_secret(session, wrapped.kek_label)
        try:
            return kek.unwrap_key(
                ObjectClass.SECRET_KEY,
                KeyType.AES,
                wrapped.wrapped,
                mechanism=_WRAP_MECHANISMS[wrapped.mechanism],
                store=False,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                template={
                    Attribute.TOKEN: False,
                    Attribute.SENSITIVE: not readable,
                    Attribute.EXTRACTABLE: True,
                },
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
        mechanism = self.wrap_mechanism()

        def rewrap(session: Any) -> WrappedKey:
            new_kek = self._find_secret(session, new_kek_label)
            obj = self._unwrap_object(session, wrapped, readable=False)
            try:
                data = new_kek.wrap_key(obj, mechanism=_WRAP_MECHANISMS[mechanism])
            finally:
                obj.destroy()
            return WrappedKey(wrapped=bytes(data), mechanism=mechanism, kek_label=new_kek_label)

        return self._run(rewrap)

    def export_key(self, label: str, *, wrapping_label: str | None = None) -> bytes:
        """Try to take key `label` out of the token: its value, or wrapped under
        `wrapping_label`. Cofre never calls this; it exists so that `cofre hsm status` and
        the tests can show the token refusing for every Cofre key.

        Raises `HSMKeyNotExtractable` for a sensitive or non-extractable key.
        """

        def export(session: Any) -> bytes:
            key = self._find_secret(session, label)
            if wrapping_label is None:
                return bytes(key[Attribute.VALUE])
            wrapper = self._find_secret(session, wrapping_label)
            return bytes(wrapper.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD))

        return self._run(export)

    # ------------------------------------------------------------------ HMAC and signing
    def hmac_sha256(self, label: str, data: bytes) -> bytes:
        """Return HMAC-SHA256 of `data` under the token's secret key `label` (32 bytes)."""

        def mac(session: Any) -> bytes:
            key = self._find_secret(session, label)
            return bytes(key.sign(data, mechanism=Mechanism.SHA256_HMAC))

        return self._run(mac, name="hmac")

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
    )
