"""The cards' fingerprints: HMAC-SHA256 under the HSM's fingerprint key, of every key
version a stored row may carry (two while a fingerprint rotation migrates).

IN PCI SCOPE, holds card data (the digits pass through to the HSM). A part of
`vault._core.VaultCore`, kept in a module of its own so that each reads in one sitting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from cofre.blocking import may_block
from hsm.errors import HSMKeyNotFound
from hsm.keys import KeyKind, key_label
from hsm.provider import HSMProvider
from vault.keyring import DataKeyring


class Fingerprints:
    """Fingerprints of a call's cards; `VaultCore` sets the state these use."""

    _provider: HSMProvider
    _keyring: DataKeyring
    _fp_versions: list[int] | None
    _fp_read: float
    _fp_lock: threading.Lock

    def _fingerprint_versions(self) -> list[int]:
        """The fingerprint key versions on the token, newest last (two while a
        fingerprint rotation migrates). Cached for a second."""
        cached = self._fp_versions
        if cached is not None and time.monotonic() - self._fp_read <= 1.0:
            return cached
        # One thread reads the token's listing (~5 ms of PKCS#11 calls on SoftHSM2); the
        # others answer from the list they have meanwhile. Under load every executor
        # thread met the expired list at once and read it too (issue 21's profile: ~6
        # listings a second per worker, 0.45 ms of CPU per tokenize).
        # Bounded: a listing that hangs (a stuck HSM) makes the others wait once the
        # list is 5 s old, rather than serve it indefinitely through a rotation.
        if cached is None or time.monotonic() - self._fp_read > 5.0:
            may_block()
            self._fp_lock.acquire()
        elif not self._fp_lock.acquire(blocking=False):
            return cached
        try:
            now = time.monotonic()
            versions = self._fp_versions
            if versions is None or now - self._fp_read > 1.0:
                may_block()  # the listing is a thread's (`cofre.blocking`)
                versions = self._keyring.registry.versions(KeyKind.FINGERPRINT)
                if not versions:
                    self._keyring.registry.current_label(KeyKind.FINGERPRINT)  # HSMKeyNotFound
                self._fp_versions, self._fp_read = versions, now
            return versions
        finally:
            self._fp_lock.release()

    def _fingerprints(self, digits: str) -> list[bytes]:
        """Every fingerprint a stored row of this PAN may carry (one per key version).

        An older version whose key is gone is skipped: a fingerprint key is destroyed
        only after every row moved to its successor, and the version list is cached for
        a second (or the token's listing may lag the destroy). The newest must exist."""
        versions = self._fingerprint_versions()
        found = []
        for version in versions:
            label = key_label(KeyKind.FINGERPRINT, version)
            try:
                found.append(self._provider.hmac_sha256(label, digits.encode("ascii")))
            except HSMKeyNotFound:
                if version == versions[-1]:
                    raise
                self._fp_versions = None  # read the versions again on the next call
        return found

    def _card_prints(self, digits: Sequence[str]) -> tuple[list[bytes], int, list[list[bytes]]]:
        """For each of `digits` (a call's cards): the fingerprint to store, under key
        version (the second value), and every fingerprint a stored row of it may carry."""
        prints, version = self._fingerprint_many(digits)
        if len(self._fingerprint_versions()) == 1:
            return prints, version, [[fp] for fp in prints]
        return prints, version, self._fingerprints_many(digits)

    def _fingerprint_many(self, digits: Sequence[str]) -> tuple[list[bytes], int]:
        """`_fingerprint` of each of `digits` (a batch's cards), in HSM calls of many
        (`HSMProvider.hmac_sha256_many`), each distinct card once."""
        for attempt in (0, 1):
            version = self._fingerprint_versions()[-1]
            try:
                return self._hmac_many(key_label(KeyKind.FINGERPRINT, version), digits), version
            except HSMKeyNotFound:
                if attempt:
                    raise
                self._fp_versions = None
        raise AssertionError("unreachable")  # pragma: no cover

    def _fingerprints_many(self, digits: Sequence[str]) -> list[list[bytes]]:
        """`_fingerprints` of each of `digits`, in HSM calls of many."""
        versions = self._fingerprint_versions()
        found: list[list[bytes]] = [[] for _ in digits]
        for version in versions:
            try:
                macs = self._hmac_many(key_label(KeyKind.FINGERPRINT, version), digits)
            except HSMKeyNotFound:
                if version == versions[-1]:
                    raise
                self._fp_versions = None
                continue
            for prints, mac in zip(found, macs, strict=True):
                prints.append(mac)
        return found

    def _hmac_many(self, label: str, digits: Sequence[str]) -> list[bytes]:
        distinct = list(dict.fromkeys(digits))  # a card sent twice is MACed once
        macs = self._provider.hmac_sha256_many(label, [d.encode("ascii") for d in distinct])
        by_card = dict(zip(distinct, macs, strict=True))
        return [by_card[d] for d in digits]
