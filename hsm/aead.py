"""AES-256-GCM inside the token: keys that never leave it, for data that must become
unrecoverable when the key is destroyed (the short-lived security-code epochs).

IN PCI SCOPE, holds keys. Who picks the GCM IV differs by token, and this module asks
the token instead of guessing:

- SoftHSM2 (and the PKCS#11 standard) use the caller's IV: a fresh random one each call.
- AWS CloudHSM picks the IV itself: the caller passes 12 zero bytes and the module writes
  its IV back where ``CK_GCM_PARAMS.pIv`` points (a random caller IV is refused with
  ``CKR_MECHANISM_PARAM_INVALID``). python-pkcs11 points ``pIv`` at the nonce object
  it is given; a Python ``bytes`` is immutable, so the nonce passed here is always a
  ``bytearray`` this module owns and reads back.

The first encryption tries a random IV; a token that refuses it is switched (once, for
the life of the provider) to token-chosen IVs. A token-chosen IV that comes back as
zeros is refused (`HSMOperationFailed`) and its ciphertext discarded: a constant IV
under one key would break GCM.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from typing import Any, Final, cast

import pkcs11.exceptions as p11e
from pkcs11 import Attribute, KeyType, Mechanism
from pkcs11.mechanisms import GCMParams

from hsm.errors import HSMError, HSMKeyNotFound, HSMKeyUnavailable, HSMOperationFailed
from hsm.mechanisms import new_key_id, secret_key_template
from hsm.models import KeyInfo
from hsm.session import TokenSession

IV_BYTES: Final = 12
TAG_BITS: Final = 128


def _params(iv: bytearray, aad: bytes) -> GCMParams:
    # python-pkcs11 annotates the nonce as bytes, but a token that picks the IV writes
    # into it: it must be a buffer we own (see the module text).
    return GCMParams(cast(bytes, iv), aad, TAG_BITS)


class AeadOperations(TokenSession):
    """Token-resident AES-256-GCM keys: create, encrypt, decrypt (`hsm.provider`'s base)."""

    _token_picks_iv: bool | None = None

    def _describe_key(self, obj: Any) -> KeyInfo:  # pragma: no cover - HSMProvider's
        raise NotImplementedError

    def describe_key(self, label: str) -> KeyInfo:  # pragma: no cover - HSMProvider's
        raise NotImplementedError

    def destroy_key(self, label: str) -> None:  # pragma: no cover - HSMProvider's
        raise NotImplementedError

    def _create_key(self, label: str, make: Callable[[Any, bytes], object]) -> KeyInfo:
        """Run `make(session, key_id)`, which creates the token key `label` with CKA_ID
        `key_id`, exactly once, unless `label` is taken; then return the new key's
        `KeyInfo`.

        The creation is never retried: a retry after a lost reply could make the key
        twice, and a second run finds the label taken. Reading the new key is retried
        like any call: on CloudHSM a new token key may be refused until a quorum of HSMs
        has it (docs/cloudhsm.md; python-pkcs11 reads the key's CKA_CLASS as soon as
        it exists, so the refusal can come from inside `make`, after the key was
        made). A key still refused after `key_availability_timeout` is destroyed again
        where the token lets us (the destroy waits the same way; only the object with
        `key_id`) and `HSMKeyUnavailable` is raised, so that the caller does not leave
        a half-made key behind.

        A refusal in the duplicate check, before `make` runs, is raised as it is:
        nothing was made, and the key refused is another's with the label (another node
        made it a moment ago). Taken for "made, then refused", that key was answered as
        the new one, or destroyed (review 30c).
        """
        key_id = new_key_id()
        making = False

        def create(session: Any) -> None:
            nonlocal making
            self._refuse_duplicate(session, label)
            making = True
            # A new key of Cofre's making under a free label: an earlier record of the
            # label (a key destroyed since) no longer says which key it is; the key
            # registry pins this one when it records it.
            self._unpin(label)
            make(session, key_id)

        refused: HSMKeyUnavailable | None = None
        try:
            self._run(create, retry=False)
        except HSMKeyUnavailable as exc:
            if not making:
                raise
            refused = exc  # made, then refused when python-pkcs11 read it
        try:
            return self.describe_key(label)
        except HSMKeyNotFound:
            if refused is not None:
                raise refused from None
            raise
        except HSMKeyUnavailable:
            with contextlib.suppress(HSMError):
                self._destroy_made(label, key_id)
            raise

    def _destroy_made(self, label: str, key_id: bytes) -> None:
        """Destroy the objects labelled `label` with CKA_ID `key_id`: the key (or pair)
        `_create_key` made, never another labelled so (another node's, made between
        the duplicate check and this key)."""

        def destroy(session: Any) -> None:
            for obj in list(session.get_objects({Attribute.LABEL: label, Attribute.ID: key_id})):
                obj.destroy()
            self._forget_keys()

        self._run(destroy)

    def generate_aead_key(self, label: str) -> KeyInfo:
        """Create an AES-256 token key usable only to encrypt and decrypt: sensitive,
        never extractable, so destroying it makes its ciphertexts unrecoverable.

        Raises `HSMOperationFailed` when `label` is taken.
        """

        return self._generate_aes(label, {Attribute.ENCRYPT, Attribute.DECRYPT})

    def _refuse_duplicate(self, session: Any, label: str) -> None:
        if any(True for _ in session.get_objects({Attribute.LABEL: label})):
            raise HSMOperationFailed(f"a key labelled {label!r} already exists")

    def _generate_aes(self, label: str, usages: set[Attribute]) -> KeyInfo:
        """Create an AES-256 token key allowed only `usages`: sensitive, never
        extractable. The one template every AES key of Cofre's is made from (KEKs, the
        security-code epochs), so none of them can be made weaker by a copy that drifts.

        Raises `HSMOperationFailed` when `label` is taken.
        """

        def generate(session: Any, key_id: bytes) -> None:
            session.generate_key(
                KeyType.AES,
                256,
                id=key_id,
                label=label,
                store=True,
                template=secret_key_template(KeyType.AES, usages),
            )

        return self._create_key(label, generate)

    def aead_encrypt(self, label: str, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        """Return (IV, ciphertext with its 16-byte tag) of `plaintext` under token key
        `label`, authenticating `aad`. Raises `HSMKeyNotFound`, `HSMOperationFailed`."""

        def encrypt(session: Any) -> tuple[bytes, bytes]:
            key = self._find_secret(session, label)
            if self._token_picks_iv is not True:
                iv = bytearray(secrets.token_bytes(IV_BYTES))
                try:
                    sealed = key.encrypt(
                        plaintext,
                        mechanism=Mechanism.AES_GCM,
                        mechanism_param=_params(iv, aad),
                    )
                except p11e.MechanismParamInvalid:
                    if self._token_picks_iv is False:  # it took our IVs before
                        raise
                    self._token_picks_iv = True
                else:
                    self._token_picks_iv = False
                    return bytes(iv), bytes(sealed)
            iv = bytearray(IV_BYTES)
            sealed = key.encrypt(
                plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=_params(iv, aad)
            )
            if not any(iv):
                raise HSMOperationFailed("the token did not return the IV it chose")
            return bytes(iv), bytes(sealed)

        return self._run(encrypt, name="aead")

    def aead_decrypt(self, label: str, iv: bytes, sealed: bytes, aad: bytes) -> bytes:
        """Return the plaintext of `sealed` (from `aead_encrypt`) under token key `label`.

        Raises `HSMKeyNotFound` (the key was destroyed: the data is gone for good),
        `HSMOperationFailed` when the ciphertext, IV or AAD fail authentication.
        """

        def decrypt(session: Any) -> bytes:
            key = self._find_secret(session, label)
            try:
                return bytes(
                    key.decrypt(
                        sealed,
                        mechanism=Mechanism.AES_GCM,
                        mechanism_param=_params(bytearray(iv), aad),
                    )
                )
            except (p11e.EncryptedDataInvalid, p11e.EncryptedDataLenRange, p11e.DataLenRange):
                raise HSMOperationFailed("the ciphertext failed authentication") from None
            except p11e.GeneralError:
                # SoftHSM2 answers CKR_GENERAL_ERROR for a wrong tag, which is also what a
                # dying token says: if the session still answers, the data was bad.
                session.generate_random(64)
                raise HSMOperationFailed("the ciphertext failed authentication") from None

        return self._run(decrypt, name="aead")
