"""Ending a child process with its parent: a serving worker with its supervisor
(`cofre_cli.workers`), the dev witness with `cofre dev` (`cofre_cli.devwitness`).

IN PCI SCOPE (wiring). A parent killed outright (the OOM killer, ``kill -9``) runs no
`finally` and stops no child: only the kernel can tell the child.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from typing import Final

__all__ = ["die_with"]

_PR_SET_PDEATHSIG: Final = 1  # <linux/prctl.h>


def die_with(parent: int, signum: int = signal.SIGKILL) -> None:
    """Have the kernel send this process `signum` when `parent` dies (Linux
    ``PR_SET_PDEATHSIG``; elsewhere nothing), and exit at once (status 1) when `parent`
    died before the request took effect. The signal comes when the parent's thread that
    started this process ends: call it in a child that the parent's main thread started.

    A worker gets SIGKILL: a supervisor killed outright must not leave orphans serving
    the port, and to its workers it is the same crash (nothing was answered before its
    commit). The dev witness gets SIGTERM: it stops as for `cofre dev`'s own stop."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)
