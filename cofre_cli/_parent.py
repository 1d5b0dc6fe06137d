"""Ending a child process with its parent (moved out of `cofre_cli.workers`).

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from typing import Final

__all__ = ["die_with"]

_PR_SET_PDEATHSIG: Final = 1  # <linux/prctl.h>


def die_with(supervisor: int) -> None:
    """Have the kernel SIGKILL this worker when the supervisor dies (Linux
    ``PR_SET_PDEATHSIG``): a supervisor killed outright (OOM killer, SIGKILL) must not
    leave orphans serving the port, and to its workers it is the same crash (nothing
    was answered before its commit)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != supervisor:  # it died before the request took effect
        os._exit(1)
