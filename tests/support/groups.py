"""Operations that form one commit group together, in a chosen order."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection

from vault.errors import IdempotencyConflict
from vault.models import TokenRecord
from vault.storage.database import _take_writer_lock
from vault.storage.groupcommit import GroupCommitter

if TYPE_CHECKING:
    from vault.models import CallContext
    from vault.service import TokenizeRequest, VaultService

T = TypeVar("T")


def one_group(
    committer: GroupCommitter, works: list[Callable[[Connection], Any]]
) -> list[Future[Any]]:
    """Submit `works` (operations) in one group together (`submitted_in_one_group`)."""
    return submitted_in_one_group(committer, [partial(committer.run, w) for w in works])


def submitted_in_one_group(
    committer: GroupCommitter, calls: Sequence[Callable[[], T]]
) -> list[Future[T]]:
    """Run `calls` (each submits one operation to `committer`), each from a thread of its
    own, in no set order, while the writer is held inside a first operation, so that
    they all wait and form the next group together."""
    held, release = threading.Event(), threading.Event()

    def hold(_c: Connection) -> None:
        held.set()
        release.wait(10)

    with ThreadPoolExecutor(len(calls) + 1) as pool:
        first = pool.submit(committer.run, hold)
        assert held.wait(10)
        futures = [pool.submit(call) for call in calls]
        while len(committer._queue) < len(calls):
            threading.Event().wait(0.01)
        release.set()
        first.result(10)
    return futures


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
            if futures[-1].done():  # ended without queueing: its error, not a hang
                futures[-1].result()
                raise AssertionError(f"call {count} returned without a commit group")
            threading.Event().wait(0.005)
    release.set()
    first.result(10)
    holder.shutdown(wait=True)
    return futures


def one_answered_one_409_in_one_group(
    service: VaultService, calls: Sequence[tuple[CallContext, TokenizeRequest]]
) -> None:
    """Tokenize each of `calls` (a caller and its request, two sending one idempotency
    key) with `service` in one commit group, in this order (`in_one_group`).

    Raises `AssertionError` unless one call is answered and one refused 409
    (`IdempotencyConflict`): never both answered, never a 500."""
    committer = service._committer
    assert committer is not None

    def call(ctx: CallContext, request: TokenizeRequest) -> Callable[[], TokenRecord]:
        return lambda: service.tokenize(ctx, request)

    futures: list[Future[TokenRecord]] = in_one_group(
        committer, [call(ctx, request) for ctx, request in calls]
    )
    outcomes: list[object] = []
    for future in futures:
        try:
            outcomes.append(future.result(30))
        except Exception as exc:  # noqa: BLE001 - kept for the assertions
            outcomes.append(exc)
    answered = [o for o in outcomes if isinstance(o, TokenRecord)]
    refused = [o for o in outcomes if isinstance(o, IdempotencyConflict)]
    assert (len(answered), len(refused)) == (1, 1), outcomes


def _waits_for_the_writer_lock(thread: int) -> bool:
    """Whether `thread` is queued for a SQLite database's writer lock
    (`vault.storage.database._take_writer_lock`), seen in its stack."""
    frame = sys._current_frames().get(thread)
    while frame is not None:
        if frame.f_code is _take_writer_lock.__code__:
            return True
        frame = frame.f_back
    return False


def in_a_held_group(
    vault: VaultService, last: Callable[[], object]
) -> tuple[Future[object], list[int]]:
    """Hold `vault`'s committer, submit an innocent operation that counts its runs,
    then call `last` from a thread of its own; release once `last` is queued behind it
    (one group), done, or waiting for SQLite's writer lock that the held group has (a
    check before the group, which cannot join it: the hold's 10 s bound had been the
    only release, 10 s a call). Returns `last`'s future and the innocent operation's
    runs."""
    committer = vault._committer
    assert committer is not None
    held, release, runs = threading.Event(), threading.Event(), []

    def hold(_c: Connection) -> None:
        held.set()
        release.wait(10)

    def innocent(_c: Connection) -> str:
        runs.append(1)
        return "answered"

    def last_in_its_thread() -> object:
        caller.append(threading.get_ident())
        return last()

    pool, caller = ThreadPoolExecutor(3), list[int]()
    holder = pool.submit(committer.run, hold)
    assert held.wait(10)
    victim = pool.submit(committer.run, innocent)
    while not committer._queue:
        threading.Event().wait(0.005)
    attacker = pool.submit(last_in_its_thread)
    while (
        len(committer._queue) < 2
        and not attacker.done()
        and not (caller and _waits_for_the_writer_lock(caller[0]))
    ):
        threading.Event().wait(0.005)
    release.set()
    holder.result(10)
    assert victim.result(30) == "answered"
    pool.shutdown(wait=True)
    return attacker, runs
