"""The process's soft limit of open files, raised toward its hard limit as `cofre serve`
starts (session 38, rl38).

IN PCI SCOPE (wiring).

The mTLS listener's bounds (`api._descriptor_bounds`) and the capture listener's
(`cofre_cli.capture.capture_connections`) are shares of the soft limit of open files.
A container runtime usually leaves it at 1,024 with a far higher hard limit, and any
process may raise its soft limit up to its hard one: left there, a worker held 512 mTLS
connections in all, 128 handshakes under way, and one identity fewer connections than
`COFRE_SERVER__MAX_CONNECTIONS_PER_IDENTITY` (2,000) grants. So `cofre serve` raises the
soft limit to `OPEN_FILES_TARGET` before its workers start (they inherit it), never above
the hard limit and never lower than it was; the bounds then follow.

Raised past 1,024, descriptors numbered 1,024 and above are handed out, which
``select()`` cannot watch (``FD_SETSIZE``: Python's ``select.select`` refuses them, C
code writes past its ``fd_set``). Audited for session 38: no module of ours calls
``select``; the event loops (asyncio's and uvloop's) use epoll; psycopg's C wait
function uses ``poll`` (its pure-Python ``select`` one is only taken on request,
``PSYCOPG_WAIT_FUNC``, or without the C extension), and libpq, httpcore, urllib3,
CPython's socket timeouts, ``subprocess`` and ``multiprocessing`` poll too
(`tests/cofre_cli/test_rl38_open_files.py` runs a query on a connection numbered past
1,024). Not auditable here: a vendor's PKCS#11 library (AWS CloudHSM SDK 5); an operator
who doubts one sets the hard limit to the soft one (docs/operations.md).
"""

from __future__ import annotations

import resource
from typing import Final

import structlog

__all__ = ["OPEN_FILES_TARGET", "raise_open_files"]

_log = structlog.get_logger("cofre.vault")

# The soft limit `cofre serve` asks for. Each connection costs memory as well as a
# descriptor: about 300 KiB measured on a worker here, idle mTLS and silent handshakes
# alike (the event loop's TLS read buffer is 256 KiB). At 2,048 a worker's listeners
# hold at most 1,024 mTLS and 512 capture connections, about 450 MiB, which the
# shipped manifests' memory takes (production: two workers in 2 GiB); at 8,192 one
# stolen certificate's idle connections alone (2,000 per worker) would take 1.2 GiB of
# that pod. A higher limit is the operator's, with memory to match (docs/operations.md).
OPEN_FILES_TARGET: Final = 2048


def raise_open_files(target: int = OPEN_FILES_TARGET) -> tuple[int, int]:
    """Raise this process's soft limit of open files to `target`, or to its hard limit
    when that is lower; never lower it. Returns the soft limit before and after (equal
    when nothing changed); logs a change, and a refusal by the kernel (the limit is
    then left as it was)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft, soft
    wanted = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if wanted <= soft:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (OSError, ValueError) as exc:
        _log.warning(
            "could not raise the soft limit of open files",
            soft=soft,
            hard=hard,
            wanted=wanted,
            error=str(exc),
        )
        return soft, soft
    _log.info("raised the soft limit of open files", before=soft, after=wanted, hard=hard)
    return soft, wanted
