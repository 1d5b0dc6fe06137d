"""Work that may run on an event loop only as long as it need not wait.

IN PCI SCOPE (the vault's calls run here). The API begins a single token call on its
event loop instead of in a thread (issue 21: the hop to a thread and back was ~10
context switches and ~15% of a worker's CPU per tokenize). That loop serves every
connection of its worker, so such a call must never wait. Every place where the vault,
its storage or the HSM session pool could wait (a database connection, an audit entry's
commit, a busy HSM session, a networked HSM's round trip, a sleep, a listing of the
token) calls `may_block()` first; on a thread inside `never_blocking()` it raises
`WouldBlock`, and the caller runs the whole call again, from its start, in a thread.

So what a call does before its first such place must be safe to do twice: checks, and
counts that only make a later check stricter (`vault._early_room.EarlyRoom`'s admitted
units). Nothing before it writes, audits or charges.

The flag is the thread's own (a `threading.local`, not a context variable): the work a
call hands to the group committer runs in a copy of the call's context on the
committer's thread, which may wait.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from cofre.errors import WouldBlock

__all__ = ["may_block", "may_wait", "never_blocking"]

_here = threading.local()


@contextlib.contextmanager
def never_blocking() -> Iterator[None]:
    """Within: `may_block()` on this thread raises `WouldBlock`."""
    before = getattr(_here, "never", False)
    _here.never = True
    try:
        yield
    finally:
        _here.never = before


def may_block() -> None:
    """Call before anything that may wait; raises `WouldBlock` inside `never_blocking()`
    on this thread, else does nothing."""
    if getattr(_here, "never", False):
        raise WouldBlock


def may_wait() -> bool:
    """Whether this thread may wait now (False inside `never_blocking()`): for a place
    that must leave things as the call's rerun in a thread expects before `may_block`."""
    return not getattr(_here, "never", False)
