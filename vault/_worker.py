"""The thread a background loop of the vault runs in (the token purge, the key
rotation): started and stopped by the wiring, its health read by readiness.

IN PCI SCOPE.
"""

from __future__ import annotations

import threading

from cofre.background import LoopHealth

__all__ = ["WorkerThread"]


class WorkerThread:
    """A daemon thread named `thread_name` running the subclass's `_loop` until
    `stop`, which waits up to 30 s for the tick under way. `health` (`LoopHealth` of
    `loop_name`) keeps the loop's failures; `last_error` is its last."""

    def __init__(self, *, thread_name: str, loop_name: str, interval: float) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=thread_name, daemon=True)
        self.health = LoopHealth(loop_name)

    @property
    def last_error(self) -> str | None:
        return self.health.last_error

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        raise NotImplementedError
