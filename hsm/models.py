"""What the hsm package returns: small frozen records that never hold key material.

IN PCI SCOPE.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    # CKA_ID (base64: hex would often hold 12-digit runs that PAN maskers rewrite), and
    # what identifies the key material without revealing it: the
    # token-computed key check value (CKA_CHECK_VALUE) of a secret key, the SHA-256 of
    # an EC public key's point. `vault.key_registry` compares them with its records.
    key_id: str | None = None
    key_check: str | None = None


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A data key encrypted under a KEK that never leaves the HSM.

    `algorithm` names the wrap algorithm (``aes-kwp-rfc5649`` or ``aes-kw-rfc3394``, see
    `hsm.mechanisms.WrapAlgorithm`), never a mechanism number, so that a later unwrap
    uses the same algorithm on whichever token holds the KEK by then (SoftHSM2's
    standard mechanism or CloudHSM's vendor one).
    """

    wrapped: bytes
    algorithm: str
    kek_label: str


@dataclass(frozen=True, slots=True)
class TokenInfo:
    library: str
    library_version: str
    token_label: str
    manufacturer: str
    model: str
    serial: str


@dataclass(frozen=True, slots=True)
class LibraryIdentity:
    """What a loaded PKCS#11 library says about itself (``C_GetInfo``) and about the
    slot and token Cofre uses (``C_GetSlotInfo``, ``C_GetTokenInfo``; empty when no
    token has the configured label). A library may say anything: this names the
    product, it proves nothing."""

    manufacturer: str
    description: str
    slot_manufacturer: str = ""
    token_manufacturer: str = ""
    token_model: str = ""

    def describe(self) -> str:
        """The non-empty fields, as ``name 'value'`` pairs for a message."""
        fields = (
            ("manufacturer", self.manufacturer),
            ("description", self.description),
            ("slot manufacturer", self.slot_manufacturer),
            ("token manufacturer", self.token_manufacturer),
            ("token model", self.token_model),
        )
        return ", ".join(f"{name} {value!r}" for name, value in fields if value)
