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
