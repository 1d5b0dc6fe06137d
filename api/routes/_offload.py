"""One hop from the event loop to a thread for a blocking vault call.

The vault's service is synchronous: its HSM calls block, and an operation returns only
once the group commit that made it durable is done. A plain ``def`` route would cost two
hops through anyio's thread pool per request (FastAPI runs the endpoint there, then the
validation of its response model again); an ``async def`` route that awaits `in_thread`
costs one, through asyncio's own executor, which costs about a third of anyio's hop in
CPU (issue 21: the hops were 5-14% of a worker's GIL time under load).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, ParamSpec, TypeVar

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
