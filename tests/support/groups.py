"""Operations that form one commit group together, in a chosen order."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy import Connection

from vault.storage.groupcommit import GroupCommitter

T = TypeVar("T")


def in_one_group(committer: GroupCommitter, calls: Sequence[Callable[[], T]]) -> list[Future[T]]:
    """Run each of `calls` (each submits one operation to `committer`) from a thread of
    its own, in this order, while the committer is held inside a first operation: they
    all wait, and form its next group together."""
    held, release = threading.Event(), threading.Event()

    def hold(_c: Connection) -> None:
        held.set()
        release.wait(10)

    holder = ThreadPoolExecutor(1)
    first = holder.submit(committer.run, hold)
    assert held.wait(10)
    futures: list[Future[T]] = []
    for count, call in enumerate(calls, start=1):
        caller = ThreadPoolExecutor(1)
        futures.append(caller.submit(call))
        caller.shutdown(wait=False)
        while len(committer._queue) < count:  # queued in this order
            threading.Event().wait(0.005)
    release.set()
    first.result(10)
    holder.shutdown(wait=True)
    return futures
