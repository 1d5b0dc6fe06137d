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


def supervisor_announcer(pipe: Connection | None, index: int) -> Callable[[], None]:
    """What worker `index` calls once it answers: it writes `index` on `pipe` (the
    supervisor's) and closes it, once; nothing without a pipe. Handed to the worker's
    target by `cofre_cli.workers._worker` (session 40: the pipe was a module global set
    there and read here, against STYLE's "No global mutable state outside the app
    factory"; the target is Cofre's own, so it takes the announcer as an argument)."""
    left = [pipe]  # taken by the first call

    def announce() -> None:
        taken = left.pop() if left else None
        if taken is None:
            return
        try:
            taken.send(index)
            taken.close()
        except OSError:
            pass  # the supervisor is gone: the worker dies with it (`cofre_cli._parent`)

    return announce


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
