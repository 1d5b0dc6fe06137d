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
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final, ParamSpec, TypeVar

from vault.models import Pending

P = ParamSpec("P")
T = TypeVar("T")

# As many threads as anyio's default limiter had: each request waiting for its commit
# holds one, and the group committer gathers them.
THREADS: Final = 40
_executor = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="cofre-vault-call")


async def in_thread(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `function` in a thread, in a copy of the caller's context (the request's
    audit trail, ids and span travel with it), and return or raise what it does."""
    context = contextvars.copy_context()
    call = functools.partial(context.run, function, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_executor, call)


async def answered(begin: Callable[P, Pending[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `begin` (a vault call up to its commit, `vault.models.Pending`) in a thread,
    wait for the commit here, on the event loop, and answer what the synchronous call
    would: here when its transaction simply succeeded, else finished in a thread."""
    pending = await in_thread(begin, *args, **kwargs)
    await _done(pending.committed)
    answer = pending.answer()
    if answer is not None:
        return answer
    return await in_thread(pending.finish)


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
