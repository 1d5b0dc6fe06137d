"""One hop from the event loop to a thread for a blocking vault call.

The vault's service is synchronous: its HSM calls block, and an operation returns only
once the group commit that made it durable is done. A plain ``def`` route would cost two
hops through anyio's thread pool per request (FastAPI runs the endpoint there, then the
validation of its response model again); an ``async def`` route that awaits `in_thread`
costs one, through asyncio's own executor, which costs about a third of anyio's hop in
CPU (issue 21: the hops were 5-14% of a worker's GIL time under load).

The single-item token routes do not even park that thread for the commit (`answered`):
the thread runs the call up to its transaction's submission to the group committer and
returns; the event loop waits for the commit and answers. Only a call whose
transaction did not simply succeed (a refusal to audit, a unique-key race to retry)
hops to a thread again to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final, ParamSpec, TypeVar

import structlog

from cofre.errors import CofreError
from vault.models import Pending

P = ParamSpec("P")
T = TypeVar("T")

# As many threads as anyio's default limiter had. A single token call holds one until
# its transaction is submitted; other calls until they are done. At most as many single
# token calls wait for their commit (`_begun`).
THREADS: Final = 40
_executor = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="cofre-vault-call")
_waiting = threading.BoundedSemaphore(THREADS)
_log = structlog.get_logger("cofre.api")


async def in_thread(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `function` in a thread, in a copy of the caller's context (the request's
    audit trail, ids and span travel with it), and return or raise what it does."""
    context = contextvars.copy_context()
    call = functools.partial(context.run, function, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_executor, call)


async def answered(begin: Callable[P, Pending[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `begin` (a vault call up to its commit, `vault.models.Pending`) in a thread,
    wait for the commit here, on the event loop, and answer what the synchronous call
    would: here when its transaction simply succeeded, else finished in a thread.

    A cancelled request (a shutdown's deadline) still has its call finished, in a
    thread: a refusal its transaction committed (a 404's charge, a 409) is audited
    there, as the parked thread did before (review 11)."""
    loop = asyncio.get_running_loop()
    call = functools.partial(begin, *args, **kwargs)
    started = loop.run_in_executor(
        _executor, functools.partial(contextvars.copy_context().run, _begun, call)
    )
    try:
        # Shielded: cancelling the wait must not lose the `Pending` the thread returns.
        pending = await asyncio.shield(started)
    except asyncio.CancelledError:
        started.add_done_callback(_abandoned)
        raise
    try:
        await _done(pending.committed)
    except asyncio.CancelledError:
        _abandon(pending)
        raise
    answer = pending.answer()
    if answer is not None:
        return answer
    return await in_thread(pending.finish)


def _begun(begin: Callable[[], Pending[T]]) -> Pending[T]:
    """`begin`, once fewer than `THREADS` calls of this process wait for their commit.
    A parked thread per waiting call bounded them before (issue 21); unbounded, the
    calls one caller sends before its rate charge is refused at the commit would all
    spend their HMACs and wait in the committer's queue."""
    _waiting.acquire()
    try:
        pending = begin()
    except BaseException:
        _waiting.release()
        raise
    pending.committed.add_done_callback(lambda _: _waiting.release())
    return pending


def _abandoned(started: asyncio.Future[Pending[Any]]) -> None:
    """`begin` ended after its request was cancelled: finish what it submitted (what it
    raised itself, it audited)."""
    if not started.cancelled() and started.exception() is None:
        _abandon(started.result())


def _abandon(pending: Pending[Any]) -> None:
    """Finish `pending` in a thread once committed, for no one: its refusal's audit
    entry, its retry."""
    context = contextvars.copy_context()

    def finish(_: Future[Any]) -> None:
        if pending.answer() is None:
            with contextlib.suppress(RuntimeError):  # the executor is shut down
                _executor.submit(context.run, _finish_quietly, pending)

    pending.committed.add_done_callback(finish)


def _finish_quietly(pending: Pending[Any]) -> None:
    try:
        pending.finish()
    except CofreError:
        pass  # audited by `finish`; nobody waits for the answer
    except Exception as exc:  # noqa: BLE001 - a thread with no caller must not die loud
        _log.error("abandoned call failed", error=type(exc).__name__)


async def _done(future: Future[Any]) -> None:
    """Wait, on the running loop, until `future` (done in the committer's thread) is
    done. Cancelling the wait leaves `future` alone: the operation commits anyway, as
    it did when a thread waited for it."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: Future[Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(_release, waiter)

    future.add_done_callback(wake)
    await waiter


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # not cancelled meanwhile
        waiter.set_result(None)
