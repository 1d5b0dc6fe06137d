"""A worker tells its supervisor it answers: `cofre dev`'s banner waits for every one.

IN PCI SCOPE (wiring). Session 38: `make run` printed "The vault listens on ..." and
the curl call to paste before any worker had started, and the pasted call failed with
``Couldn't connect to server`` for up to 11 s. Now each worker, once its mTLS listener
accepts connections and its own readiness check passes, writes its index on a pipe the
supervisor gave it (`cofre_cli.workers.run_workers`); the supervisor says the node is
ready when every worker has (a node of one process calls the callback itself). No
polling of the vault from outside: a connection to the shared port reaches whichever
worker the kernel picks, so an answer from one would not say that all of them answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Final

from api.lifecycle import Readiness

# How often a worker whose check has not passed yet tries it again.
RETRY_SECONDS: Final = 0.2

# In a worker process: the write end of its supervisor's pipe (`set_pipe`).
_pipe: Connection | None = None
_index = 0


def set_pipe(pipe: Connection | None, index: int) -> None:
    """In worker `index`: where `announce_to_supervisor` writes (None: nowhere)."""
    global _pipe, _index  # one pipe per worker process, set at its start
    _pipe, _index = pipe, index


def announce_to_supervisor() -> None:
    """Tell the supervisor this worker answers (once; nothing without a pipe)."""
    global _pipe  # closed after its one message
    pipe, _pipe = _pipe, None
    if pipe is None:
        return
    try:
        pipe.send(_index)
        pipe.close()
    except OSError:
        pass  # the supervisor is gone: the worker dies with it (`cofre_cli._parent`)


def announce_when_ready(
    check: Callable[[], object], readiness: Readiness, announce: Callable[[], None]
) -> Callable[[], None]:
    """The function to call once the listeners accept (`api.lifecycle.ManagedServer.
    on_started`): it starts a daemon thread that runs `check` until it passes, then
    calls `announce`; it gives up, silently, when the process begins to drain."""

    def wait_then_announce() -> None:
        while not readiness.draining:
            try:
                check()
            except Exception:  # noqa: BLE001 - not ready yet: the readiness probes say why
                stop = threading.Event()
                stop.wait(RETRY_SECONDS)
                continue
            announce()
            return

    def start() -> None:
        threading.Thread(target=wait_then_announce, name="cofre-ready-signal", daemon=True).start()

    return start
