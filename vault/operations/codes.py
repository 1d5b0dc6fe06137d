"""Security codes held once: the sweep that expires them and destroys their spent HSM
key epochs, and their counts (`vault.security_codes` holds the rules).

IN PCI SCOPE, holds sensitive authentication data (encrypted, for an hour at most).
Holding happens in tokenize, taking in the relay; nothing here returns a code.
"""

from __future__ import annotations

from datetime import datetime

from vault._core import VaultCore
from vault.security_codes import SweepResult


class SecurityCodeOperations(VaultCore):
    """The security-code upkeep of the vault."""

    def sweep_security_codes(self, *, actor: str = "cofre") -> SweepResult:
        """Delete expired codes and destroy every epoch key whose codes have all expired
        (audited). Raises `StorageUnavailable`, `AuditWriteFailed`, `HSMUnavailable`."""
        self._ensure_initialized()
        with self._storage():
            return self._codes.sweep(self._clock(), actor=actor)

    def security_code_counts(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> dict[str, int]:
        """Codes held, used and expired in the hours of [`since`, `until`) (all time by
        default), and ``held_now``. Counts only. Raises `StorageUnavailable`."""
        with self._storage():
            return self._codes.counts(since, until)
