"""The key hierarchy on the token: labels, versions, and idempotent initialisation.

IN PCI SCOPE, holds keys. Token keys are labelled ``cofre-<kind>-v<version>``:

- ``cofre-kek-vN``: AES-256 KEK, wraps and unwraps data keys, nothing else.
- ``cofre-fp-vN``: HMAC-SHA256 key that fingerprints PANs (dedup and lookup).
- ``cofre-audit-vN``: EC P-256 key pair that signs audit tree heads.
- ``cofre-csc-eN``: AES-256-GCM key of security-code epoch N (the hour since the Unix
  epoch when it was made), sensitive and never extractable; destroyed once every code
  sealed under it has expired, so no backup can recover a code. Not a versioned kind:
  one per hour, made and destroyed by `vault.security_codes`.

Data keys (the PAN AES-256-GCM key and the FF1 key) never live on the token: they are
generated there, exported wrapped under the current KEK, and stored wrapped by `vault`.
See docs/key-hierarchy.md.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Final

from hsm.errors import HSMKeyNotFound
from hsm.provider import HSMProvider, KeyInfo

_LABEL: Final = re.compile(r"^cofre-(kek|fp|audit)-v([1-9][0-9]{0,5})$")
_CODE_EPOCH_LABEL: Final = re.compile(r"^cofre-csc-e([1-9][0-9]{0,9})$")


class KeyKind(StrEnum):
    KEK = "kek"
    FINGERPRINT = "fp"
    AUDIT = "audit"


def key_label(kind: KeyKind, version: int) -> str:
    """Return the token label of version `version` of `kind` (``cofre-kek-v1``)."""
    if version < 1:
        raise ValueError("key versions start at 1")
    return f"cofre-{kind.value}-v{version}"


def parse_key_label(label: str) -> tuple[KeyKind, int] | None:
    """Return (kind, version) for a Cofre label, ``None`` for any other label."""
    match = _LABEL.match(label)
    if match is None:
        return None
    return KeyKind(match.group(1)), int(match.group(2))


def code_epoch_label(epoch: int) -> str:
    """Return the token label of security-code epoch `epoch` (``cofre-csc-e494520``)."""
    if epoch < 1:
        raise ValueError("code epochs start at 1")
    return f"cofre-csc-e{epoch}"


def parse_code_epoch_label(label: str) -> int | None:
    """Return the epoch of a security-code key label, ``None`` for any other label."""
    match = _CODE_EPOCH_LABEL.match(label)
    return None if match is None else int(match.group(1))


class KeyHierarchy:
    """Cofre's keys on one token, found by label."""

    def __init__(self, provider: HSMProvider) -> None:
        self._provider = provider

    @property
    def provider(self) -> HSMProvider:
        return self._provider

    def versions(self, kind: KeyKind) -> list[int]:
        """Return the versions of `kind` present on the token, ascending."""
        found = set()
        for info in self._provider.list_keys():
            parsed = parse_key_label(info.label)
            if parsed is not None and parsed[0] == kind:
                found.add(parsed[1])
        return sorted(found)

    def current_label(self, kind: KeyKind) -> str:
        """Return the label of the newest version of `kind`. Raises `HSMKeyNotFound`."""
        versions = self.versions(kind)
        if not versions:
            raise HSMKeyNotFound(f"no {kind.value} key on the token: run `cofre hsm init`")
        return key_label(kind, versions[-1])

    def create(self, kind: KeyKind, version: int) -> KeyInfo:
        """Create version `version` of `kind` on the token and return its `KeyInfo`."""
        label = key_label(kind, version)
        if kind is KeyKind.KEK:
            return self._provider.generate_kek(label)
        if kind is KeyKind.FINGERPRINT:
            return self._provider.generate_hmac_key(label)
        return self._provider.generate_signing_key(label)

    def initialize(self) -> list[str]:
        """Create version 1 of every kind that has no version yet; return the labels created.

        Idempotent: on an initialised token it creates nothing and returns ``[]``.
        """
        return [self.create(kind, 1).label for kind in KeyKind if not self.versions(kind)]
