"""`api.routes._offload.answered`: a vault call handed to the group committer is waited
for on the event loop, answered there when its transaction simply succeeded, finished
in a thread otherwise, and a cancelled wait leaves the operation alone (issue 21).

The `Pending` here wraps plain futures that the test resolves from another thread, as
the group committer does: what is under test is the hand-over between the loop and
that thread, not the vault (tests/vault/test_pending.py runs the real one)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any, cast

import pytest

from api.models import DetokenizeBatchRequest, TokenizeBatchRequest, TokenizeRequest
from api.routes import _offload, tokens
from api.routes._offload import THREADS, answered, answered_on_loop
from cofre.blocking import may_block
from cofre.errors import CofreError
from tests.support.pans import card_number
from vault.models import Pending


class _Call:
    """A call whose transaction `commit()` completes from another thread; `begin` waits
    for `go` first (a slow HSM)."""

    def __init__(self, raw: object) -> None:
        self.future: Future[object] = Future()
        self.future.set_running_or_notify_cancel()
        self.raw = raw
        self.finished = 0
        self.go = threading.Event()
        self.go.set()
        self.done = threading.Event()
        self.finishing = threading.Event()
        self.go_finish = threading.Event()
        self.go_finish.set()

    def begin(self) -> Pending[str]:
        assert self.go.wait(10)
        return Pending(self.future, self._quick, self._finish)

    def commit(self, delay: float = 0.05) -> None:
        timer = threading.Timer(delay, self.future.set_result, [self.raw])
        timer.start()

    def _quick(self, raw: object) -> str | None:
        return raw if isinstance(raw, str) else None

    def _finish(self) -> str:
        self.finishing.set()
        assert self.go_finish.wait(10)
        self.finished += 1
        self.done.set()
        raise CofreError(f"refused: {self.raw!r}")


def test_a_plain_success_is_answered_on_the_loop_without_finishing() -> None:
    call = _Call("tok_1")
    call.commit()
    assert asyncio.run(answered(call.begin)) == "tok_1"
    assert call.finished == 0


def test_anything_else_is_finished_in_a_thread() -> None:
    call = _Call(409)
    call.commit()
    with pytest.raises(CofreError, match="refused: 409"):
        asyncio.run(answered(call.begin))
    assert call.finished == 1


def test_a_cancelled_wait_leaves_the_operation_to_commit() -> None:
    call = _Call("tok_2")
    errors: list[dict[str, object]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _l, c: errors.append(c))
        task = asyncio.create_task(answered(call.begin))
        await asyncio.sleep(0.05)  # waiting for the commit now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not call.future.cancel()  # the committer's future is not the waiter's
        call.commit(0)
        await asyncio.sleep(0.1)  # its wake-up reaches a cancelled waiter: nothing

    asyncio.run(main())
    assert call.future.result() == "tok_2"
    assert errors == []
    assert call.finished == 0


@pytest.mark.parametrize(
    "while_", ["waiting for the commit", "in begin", "in begin past the loop's end"]
)
def test_a_cancelled_request_still_has_its_refusal_finished(while_: str) -> None:
    """A refusal's audit entry is written by `finish`: a request cancelled (a shutdown's
    deadline) before its answer still has it run, in a thread, for no one, even once
    the event loop is closed; `drain` waits for it."""
    call = _Call(404)
    if while_ != "waiting for the commit":
        call.go.clear()

    async def main() -> None:
        task = asyncio.create_task(answered(call.begin))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        if while_ != "in begin past the loop's end":
            call.go.set()
            call.commit(0.05)

    asyncio.run(main())
    if while_ == "in begin past the loop's end":
        call.go.set()
        call.commit(0.05)
    _offload.drain(10)
    assert call.finished == 1
    assert not _offload._left


def test_a_request_cancelled_while_its_refusal_is_finished_is_waited_for() -> None:
    call = _Call(409)
    call.go_finish.clear()

    async def main() -> None:
        task = asyncio.create_task(answered(call.begin))
        call.commit(0)
        assert await asyncio.to_thread(call.finishing.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    threading.Timer(0.2, call.go_finish.set).start()
    assert _offload._left  # `drain` has it to wait for
    _offload.drain(10)
    assert call.finished == 1
    assert not _offload._left


def test_waiting_calls_are_counted_until_their_commit() -> None:
    """At most `THREADS` calls wait for their commit (a parked thread each bounded
    them before): a slot is held from `begin` to the commit, and given back when
    `begin` raises."""
    call = _Call("tok_3")

    def failing() -> Pending[str]:
        raise CofreError("refused before the transaction")

    async def main() -> None:
        with pytest.raises(CofreError):
            await answered(failing)
        task = asyncio.create_task(answered(call.begin))
        await asyncio.sleep(0.05)
        assert _offload._waiting._value == THREADS - 1  # type: ignore[attr-defined]
        call.commit(0)
        assert await task == "tok_3"

    asyncio.run(main())
    assert _offload._waiting._value == THREADS  # type: ignore[attr-defined]


def test_calls_a_commit_group_finishes_together_wake_the_loop_once() -> None:
    """A commit group finishes every call in it at once, from the committer's thread;
    the loop is woken once for all of them (`_offload._Wakeups`), not once each: each
    wake-up is a byte written to the loop's self-pipe and the GIL handed over."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        scheduled: list[object] = []
        real = loop.call_soon_threadsafe

        def counted(callback: Callable[..., object], *args: object) -> asyncio.Handle:
            scheduled.append(callback)
            return real(callback, *args)

        setattr(loop, "call_soon_threadsafe", counted)  # noqa: B010 - a method of this loop only
        futures: list[Future[None]] = [Future() for _ in range(10)]
        waits = [asyncio.ensure_future(_offload._done(future)) for future in futures]
        await asyncio.sleep(0)  # every wait registered

        def commit() -> None:
            for future in futures:
                future.set_result(None)

        committer = threading.Thread(target=commit)
        committer.start()
        committer.join()  # the loop does not run meanwhile, as under load
        await asyncio.wait_for(asyncio.gather(*waits), 10)
        return len(scheduled)

    assert asyncio.run(main()) == 1


class _Begins:
    """`begin`s that record the thread each ran on; with `waits`, each would wait
    (`cofre.blocking.may_block`) before handing over their call."""

    def __init__(self, call: _Call, *, waits: bool) -> None:
        self.call = call
        self.waits = waits
        self.threads: list[int] = []

    def begin(self) -> Pending[str]:
        self.threads.append(threading.get_ident())
        if self.waits:
            may_block()
        return self.call.begin()


def test_a_call_that_need_not_wait_begins_on_the_loop() -> None:
    call = _Call("tok_4")
    call.commit()
    begins = _Begins(call, waits=False)

    async def main() -> tuple[str, int]:
        return await answered_on_loop(begins.begin), threading.get_ident()

    answer, loop_thread = asyncio.run(main())
    assert answer == "tok_4"
    assert begins.threads == [loop_thread]
    assert _offload._waiting._value == THREADS  # type: ignore[attr-defined]


def test_a_call_that_would_wait_begins_again_in_a_thread() -> None:
    call = _Call("tok_5")
    call.commit()
    begins = _Begins(call, waits=True)

    async def main() -> tuple[str, int]:
        return await answered_on_loop(begins.begin), threading.get_ident()

    answer, loop_thread = asyncio.run(main())
    assert answer == "tok_5"
    assert len(begins.threads) == 2
    assert begins.threads[0] == loop_thread
    assert begins.threads[1] != loop_thread
    assert _offload._waiting._value == THREADS  # type: ignore[attr-defined]


def test_a_refusal_raised_on_the_loop_reaches_the_caller() -> None:
    def refused() -> Pending[str]:
        raise CofreError("refused before the transaction")

    with pytest.raises(CofreError, match="refused before"):
        asyncio.run(answered_on_loop(refused))
    assert _offload._waiting._value == THREADS  # type: ignore[attr-defined]


def test_with_every_slot_taken_a_call_waits_for_one_in_a_thread_not_on_the_loop() -> None:
    call = _Call("tok_6")
    call.commit()
    begins = _Begins(call, waits=False)
    for _ in range(THREADS):
        _offload._waiting.acquire()

    async def main() -> tuple[str, int]:
        task = asyncio.create_task(answered_on_loop(begins.begin))
        await asyncio.sleep(0.05)
        assert begins.threads == []  # its thread waits for a slot; the loop runs on
        _offload._waiting.release()
        return await task, threading.get_ident()

    try:
        answer, loop_thread = asyncio.run(main())
    finally:
        for _ in range(THREADS - 1):
            _offload._waiting.release()
    assert answer == "tok_6"
    assert len(begins.threads) == 1
    assert begins.threads[0] != loop_thread


def test_a_cancelled_finished_call_gives_its_turn_back_only_when_it_ended() -> None:
    """Review 48b: a lookup's turn was given back when its request was cancelled (a
    drain's deadline) while its call still ran in the vault, and `drain` did not wait
    for that call. `finished` defers `after` to the call's end and counts the call for
    `drain` until then."""
    running, go = threading.Event(), threading.Event()
    released: list[str] = []

    def call() -> str:
        running.set()
        go.wait(30)
        return "done"

    async def main() -> None:
        turn = asyncio.Lock()
        await turn.acquire()

        def release() -> None:
            released.append("turn")
            turn.release()

        task = asyncio.create_task(_offload.finished(call, after=release))
        assert await asyncio.to_thread(running.wait, 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert released == []  # the call still runs: its turn is still held
        assert turn.locked()
        go.set()
        await asyncio.wait_for(turn.acquire(), 30)  # given back once the call ended
        assert released == ["turn"]

    asyncio.run(main())
    _offload.drain(30)
    with _offload._left_lock:
        assert not _offload._left


def test_a_finished_call_still_queued_when_cancelled_never_runs() -> None:
    ran: list[int] = []
    released: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        blockers = [threading.Event() for _ in range(THREADS)]
        started = [
            loop.run_in_executor(_offload._executor, blocker.wait, 30) for blocker in blockers
        ]
        task = asyncio.create_task(
            _offload.finished(ran.append, 1, after=lambda: released.append("turn"))
        )
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert released == ["turn"]  # nothing ran: given back at once
        for blocker in blockers:
            blocker.set()
        await asyncio.gather(*started)

    asyncio.run(main())
    assert ran == []


@pytest.mark.parametrize("route", ["tokenize", "detokenize"])
def test_a_batch_cancelled_while_it_runs_is_waited_for_by_drain(route: str) -> None:
    """Session 49: the batch routes ran their vault call on a plain hop, so a batch cut
    by the drain's deadline (its request cancelled) was not counted by `drain`, and the
    worker released the vault (its HSM sessions, its database) while the batch still
    ran in it. Now `drain` waits for it, as for a lookup (`finished`)."""
    running, go = threading.Event(), threading.Event()

    def call(*_: object) -> list[object]:
        running.set()
        go.wait(30)
        return []

    service = SimpleNamespace(tokenize_batch=call, detokenize_batch=call)
    state = cast(Any, SimpleNamespace(service=service))
    caller = cast(Any, SimpleNamespace(identity="spiffe://cofre/payments"))
    if route == "tokenize":
        item = TokenizeRequest(pan=card_number("400000", 49_001), format="card_random")
        request = tokens.tokenize_batch(TokenizeBatchRequest(items=[item]), caller, state)
    else:
        body = DetokenizeBatchRequest(tokens=["tok_" + "a" * 24])
        request = tokens.detokenize_batch(body, caller, state)

    async def main() -> None:
        task = asyncio.create_task(request)
        assert await asyncio.to_thread(running.wait, 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with _offload._left_lock:
            assert _offload._left, "the running batch is not counted for drain"
        go.set()

    asyncio.run(main())
    _offload.drain(30)
    with _offload._left_lock:
        assert not _offload._left
