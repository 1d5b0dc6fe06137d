"""The background thread that carries approved rotations out, batch by batch.

IN PCI SCOPE, holds keys (through `vault.rotation.KeyRotation`).
"""

from __future__ import annotations

import threading

from cofre.background import LoopHealth
from vault.rotation import KeyRotation


class RotationWorker:
    """Advances running rotations in the background until stopped; errors are kept for
    readiness and retried on the next tick (a job resumes where its last batch ended)."""

    def __init__(self, rotation: KeyRotation, interval: float = 0.5) -> None:
        self._rotation = rotation
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cofre-key-rotation", daemon=True)
        self.health = LoopHealth("key rotation")

    @property
    def last_error(self) -> str | None:
        return self.health.last_error

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                moved = self._rotation.run_pending()
            except Exception as exc:  # noqa: BLE001 - kept and retried; the job resumes
                self.health.failed(exc)
                moved = 0
            else:
                self.health.succeeded()
            if not moved:
                self._stop.wait(self._interval)
