"""The background thread that carries approved rotations out, batch by batch.

IN PCI SCOPE, holds keys (through `vault.rotation.KeyRotation`).
"""

from __future__ import annotations

from vault._worker import WorkerThread
from vault.rotation import KeyRotation


class RotationWorker(WorkerThread):
    """Advances running rotations in the background until stopped; errors are kept for
    readiness and retried on the next tick (a job resumes where its last batch ended)."""

    def __init__(self, rotation: KeyRotation, interval: float = 0.5) -> None:
        super().__init__(
            thread_name="cofre-key-rotation", loop_name="key rotation", interval=interval
        )
        self._rotation = rotation

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                moved = self._rotation.run_pending()
            except Exception as exc:  # noqa: BLE001 - kept and retried; the job resumes
                self.health.failed(exc)
                moved = 0
            else:
                # A rotation held back by rows that fail authentication (rot38): the
                # pass worked, but the rotation cannot end; readiness names it.
                held = self._rotation.held_back()
                if held is None:
                    self.health.succeeded()
                else:
                    self.health.failed(held)
            if not moved:
                self._stop.wait(self._interval)
