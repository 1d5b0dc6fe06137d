"""Expired tokens are purged on a schedule, on every node, one node at a time.

IN PCI SCOPE. PCI DSS 3.2.1 asks that stored account data be kept no longer than needed:
a token's TTL is that need, and once it has passed the ciphertext and fingerprint are
crypto-shredded (`VaultService.purge_expired`). Every node runs this worker; on
PostgreSQL an advisory lock lets one node purge at a time (the others find the lock
taken and wait for the next tick), as the audit sequencer is elected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vault._worker import WorkerThread

if TYPE_CHECKING:
    from vault.service import VaultService

__all__ = ["PurgeWorker"]


class PurgeWorker(WorkerThread):
    """Calls `service.purge_expired()` every `interval` seconds until stopped. Errors are
    kept (for readiness and logs, `health`) and retried on the next tick."""

    def __init__(self, service: VaultService, interval: float) -> None:
        super().__init__(
            thread_name="cofre-token-purge", loop_name="token purge", interval=interval
        )
        self._service = service
        self.purged = 0
        self.codes_expired = 0

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.purged += self._service.purge_expired(actor="cofre scheduled purge")
                # Security codes expire within the hour; their spent HSM key epochs are
                # destroyed here too (vault/security_codes.py).
                swept = self._service.sweep_security_codes(actor="cofre scheduled purge")
                self.codes_expired += swept.expired
            except Exception as exc:  # noqa: BLE001 - kept for readiness, retried next tick
                self.health.failed(exc)
            else:
                self.health.succeeded()
