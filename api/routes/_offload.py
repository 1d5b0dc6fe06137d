"""One hop from the event loop to a thread for a blocking vault call.

The vault's service is synchronous: its HSM calls block, and an operation returns only
once the group commit that made it durable is done. A plain ``def`` route would cost two
hops through anyio's thread pool per request (FastAPI runs the endpoint there, then the
validation of its response model again); an ``async def`` route that awaits `finished`
costs one, through asyncio's own executor, which costs about a third of anyio's hop in
CPU (issue 21: the hops were 5-14% of a worker's GIL time under load).

The single-item token routes do not even park that thread for the commit (`answered`):
the thread runs the call up to its transaction's submission to the group committer and
returns; the event loop waits for the commit and answers. Only a call whose
transaction did not simply succeed (a refusal to audit, a unique-key race to retry)
hops to a thread again to finish. The hottest (`answered_on_loop`) skip even the first
hop while their start need not wait: they begin on the event loop, and only a call that
would wait (`cofre.blocking`: a database read, an audit entry, a busy HSM session) is
begun again in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Final, ParamSpec, TypeVar

import structlog

from cofre.blocking import never_blocking
from cofre.errors import CofreError, WouldBlock
from policies.models import MAX_RELAY_PLACES
from vault.models import Pending

P = ParamSpec("P")
T = TypeVar("T")

# As many threads as anyio's default limiter had. A single token call holds one until
# its transaction is submitted; other calls until they are done. At most as many single
# token calls wait for their commit (`_begun`).
THREADS: Final = 40
_executor = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="cofre-vault-call")
# Relays wait on their upstream (up to a route's timeout, 60 s): their own threads, so
# a slow acquirer cannot starve the token calls. Each route holds at most its
# `max_in_flight` of them (16 by default, `vault.relay_client.RelayClient.slot`), and a policy's
# routes at most `MAX_RELAY_PLACES` together: every route whose upstream stalls still
# leaves the others their places, and a thread for a relay's refusal.
RELAY_THREADS: Final = MAX_RELAY_PLACES + 1
_relays = ThreadPoolExecutor(max_workers=RELAY_THREADS, thread_name_prefix="cofre-relay")
_waiting = threading.BoundedSemaphore(THREADS)
# The calls cancelled requests left, until finished (`_leave`, `drain`).
_left: set[Future[None]] = set()
_left_lock = threading.Lock()
_log = structlog.get_logger("cofre.api")


class Turns:
    """Turns by key on the event loop: one holder of a key's turn at a time, the others
    waiting here, where a wait holds no thread. For calls the vault runs one at a time
    per identity and process (`vault._early_room.EarlyRoom.one_at_a_time`, a lookup):
    waiting for that lock on threads of a pool shared by every identity, one
    certificate's lookups held all of its threads asleep while every other identity's
    calls waited for one (atk48b), and a cap per identity still let a few identities
    do it together (review 48). One lock per key the policy authorised."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    def of(self, key: str) -> asyncio.Lock:
        """`key`'s turn: acquired before the call, released when the call ended (the
        lookup route hands ``release`` to `finished` as its ``after``, so a cancelled
        request keeps the turn until its call returned)."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock


async def finished(
    function: Callable[..., T], *args: Any, after: Callable[[], None] | None = None
) -> T:
    """Run `function` in a thread, in a copy of the caller's context (the request's
    audit trail, ids and span travel with it), and return or raise what it does. When
    its request is cancelled (a drain's deadline) while it runs, `drain` waits for it
    and `after` runs only once it returned; a call still queued never runs, and `after`
    runs at once. Review 48b: a lookup's turn (`Turns`) was given back at the cancel,
    and the identity's next lookup waited on a thread for the vault's lock the first
    still held, nor did `drain` wait for the first before the vault was released. The
    batch routes ran on a plain hop (`in_thread`, until session 49), so a batch cut by
    the drain's deadline still ran while the vault was released under it."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    call = _executor.submit(functools.partial(context.run, function, *args))
    then = after
    try:
        return await asyncio.wrap_future(call)
    except asyncio.CancelledError:
        if not call.cancel():  # running: counted by `drain` until it returns
            done, later = _tracked(), then
            then = None

            def ended(_: object) -> None:
                done()
                if later is not None:
                    with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                        loop.call_soon_threadsafe(later)

            call.add_done_callback(ended)
        raise
    finally:
        if then is not None:
            then()


async def answered(begin: Callable[P, Pending[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `begin` (a vault call up to its commit, `vault.models.Pending`) in a thread,
    wait for the commit here, on the event loop, and answer what the synchronous call
    would: here when its transaction simply succeeded, else finished in a thread.

    A cancelled request (a shutdown's deadline) still has its call finished, in a
    thread, for no one: a refusal its transaction committed (a 404's charge, a 409) is
    audited there, as the parked thread did before (reviews 11 to 13). `drain` waits
    for those. A `begin` still queued when its request is cancelled never runs (nothing
    spent, nothing to audit)."""
    return await _answered(functools.partial(begin, *args, **kwargs), here=False)


async def answered_on_loop(begin: Callable[P, Pending[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """`answered`, with `begin` run here, on the event loop, as long as it need not wait
    (`cofre.blocking`): a call that would (a database read, an audit entry, a busy HSM
    session) is run again from its start in a thread, as `answered` runs it. Issue 21:
    the hop to a thread and back was ~10 context switches a request. Only for calls
    whose start is checks and in-process work: a detokenize, or a tokenize when the HSM
    is in-process (`VaultService.hsm_is_local`)."""
    return await _answered(functools.partial(begin, *args, **kwargs), here=True)


async def _answered(call: Callable[[], Pending[T]], *, here: bool) -> T:
    context = contextvars.copy_context()
    started = _begun_here(call, context) if here else None
    if started is None:
        started = _executor.submit(context.run, _begun, call)
        try:
            await _done(started)
        except asyncio.CancelledError:
            started.cancel()  # still queued: it never runs (`_leave` sees it cancelled)
            _leave(started, context)
            raise
    pending = started.result()  # or raise what `begin` raised
    try:
        await _done(pending.committed)
    except asyncio.CancelledError:
        _leave(started, context)
        raise
    answer = pending.answer()
    if answer is not None:
        return answer
    finishing = _executor.submit(contextvars.copy_context().run, pending.finish)
    try:
        return await asyncio.wrap_future(finishing)
    except asyncio.CancelledError:
        if finishing.cancelled():  # still queued: it never ran, finish it for no one
            _leave(started, context)
        else:  # running: `drain` waits for it
            done = _tracked()
            finishing.add_done_callback(lambda _: done())
        raise


async def kept(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """A hop to a thread for a call that must finish even when its request is cancelled (a
    relay: the upstream may already have the card), on the relays' threads: counted by
    `drain` from its submission until it returns, so a stopping worker releases the
    vault (and the relay's HTTP clients) only after it, and its audit entry records
    what the upstream answered. Review 34: a relay cut by the drain was recorded as
    ``upstream_unavailable`` after the acquirer approved."""
    context = contextvars.copy_context()
    call = _relays.submit(functools.partial(context.run, function, *args, **kwargs))
    done = _tracked()
    call.add_done_callback(lambda _: done())  # run, failed, or cancelled still queued
    return await asyncio.wrap_future(call)


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


def _begun_here(
    begin: Callable[[], Pending[T]], context: contextvars.Context
) -> Future[Pending[T]] | None:
    """`_begun` on this thread (the event loop's), never waiting: None when `begin` would
    wait (`WouldBlock`: nothing it did needs undoing, `cofre.blocking`) or when `THREADS`
    calls already wait for their commit; else its `Pending`, or what it raised, as done
    futures."""
    if not _waiting.acquire(blocking=False):
        return None
    started: Future[Pending[T]] = Future()
    try:
        with never_blocking():
            pending = context.run(begin)
    except WouldBlock:
        _waiting.release()
        return None
    except Exception as exc:  # noqa: BLE001 - handed on, as the executor's future does
        _waiting.release()
        started.set_exception(exc)
        return started
    except BaseException:
        _waiting.release()
        raise
    pending.committed.add_done_callback(lambda _: _waiting.release())
    started.set_result(pending)
    return started


def _leave(started: Future[Pending[Any]], context: contextvars.Context) -> None:
    """Finish, for no one, the call a cancelled request left: once `begin` returned (in
    its thread; what it raised, it audited) and its transaction is done, `finish` runs
    in a thread in the request's `context` (free by then). Everything here runs in the
    vault's threads, so it happens even once the event loop is closed."""
    done = _tracked()

    def finish(pending: Pending[Any]) -> None:
        try:
            pending.finish()
        except CofreError as exc:  # audited by `finish`; nobody waits for the answer
            _log.warning("a cancelled request's call was refused", code=exc.code)
        except Exception as exc:  # noqa: BLE001 - a thread with no caller must not die loud
            _log.error("a cancelled request's call failed", error=type(exc).__name__)
        finally:
            done()

    def committed(pending: Pending[Any]) -> None:
        if pending.answer() is not None:
            done()
            return
        try:
            _executor.submit(context.run, finish, pending)
        except RuntimeError:  # the executor is shut down: the interpreter is leaving
            done()

    def begun(_: Future[Pending[Any]]) -> None:
        if started.cancelled() or started.exception() is not None:
            done()
            return
        pending = started.result()
        pending.committed.add_done_callback(lambda _: committed(pending))

    started.add_done_callback(begun)


def _tracked() -> Callable[[], None]:
    """Count a left call in `_left` until the function returned is called (once)."""
    left: Future[None] = Future()
    with _left_lock:
        _left.add(left)

    def done() -> None:
        with _left_lock:
            _left.discard(left)
        left.set_result(None)

    return done


def drain(timeout: float) -> None:
    """Wait up to `timeout` seconds for the calls cancelled requests left to finish
    (their refusals' audit entries) and for the relays still running (`kept`). Call it
    once the server stopped and before the vault is released; what is left then is
    logged."""
    deadline = time.monotonic() + timeout
    while True:
        with _left_lock:
            left = list(_left)
        remaining = deadline - time.monotonic()
        if not left or remaining <= 0:
            break
        wait(left, timeout=remaining)
    if left:
        _log.warning("cancelled requests' calls left unfinished", count=len(left))


async def _done(future: Future[Any]) -> None:
    """Wait, on the running loop, until `future` (done in another thread: the vault
    call's, the committer's) is done. Cancelling the wait leaves `future` alone: the
    operation commits anyway, as it did when a thread waited for it."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    wakeups = _wakeups.get(loop)
    if wakeups is None:
        wakeups = _wakeups[loop] = _Wakeups(loop)
    future.add_done_callback(lambda _: wakeups.wake(waiter))
    await waiter


class _Wakeups:
    """Wake-ups of one event loop from other threads, many at a time: a commit group
    finishes every call in it at once, and each `call_soon_threadsafe` writes a byte to
    the loop's self-pipe (a system call, and the GIL dropped and taken back, in the
    committer's thread). Waiters due while one call is already scheduled ride on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # not kept alive by its entry in `_wakeups`
        self._lock = threading.Lock()
        self._due: list[asyncio.Future[None]] = []

    def wake(self, waiter: asyncio.Future[None]) -> None:
        """Set `waiter`'s result on its loop, soon (from any thread)."""
        with self._lock:
            self._due.append(waiter)
            if len(self._due) > 1:  # a call scheduled and not run yet takes it along
                return
        loop = self._loop()
        if loop is None:  # the loop is gone: nobody waits
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        with self._lock:
            due, self._due = self._due, []
        for waiter in due:
            if not waiter.done():  # not cancelled meanwhile
                waiter.set_result(None)


# Each event loop's `_Wakeups` (a worker has one loop; tests start many).
_wakeups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Wakeups] = (
    weakref.WeakKeyDictionary()
)
