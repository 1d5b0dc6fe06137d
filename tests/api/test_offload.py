"""`api.routes._offload.answered`: a vault call handed to the group committer is waited
for on the event loop, answered there when its transaction simply succeeded, finished
in a thread otherwise, and a cancelled wait leaves the operation alone (issue 21).

The `Pending` here wraps plain futures that the test resolves from another thread, as
the group committer does: what is under test is the hand-over between the loop and
that thread, not the vault (tests/vault/test_pending.py runs the real one)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

import pytest

from api.routes._offload import answered
from vault.models import Pending


class _Call:
    """A call whose transaction `commit()` completes from another thread."""

    def __init__(self, raw: object) -> None:
        self.future: Future[object] = Future()
        self.future.set_running_or_notify_cancel()
        self.raw = raw
        self.finished = 0

    def begin(self) -> Pending[str]:
        return Pending(self.future, self._quick, self._finish)

    def commit(self, delay: float = 0.05) -> None:
        timer = threading.Timer(delay, self.future.set_result, [self.raw])
        timer.start()

    def _quick(self, raw: object) -> str | None:
        return raw if isinstance(raw, str) else None

    def _finish(self) -> str:
        self.finished += 1
        raise LookupError(f"refused: {self.raw!r}")


def test_a_plain_success_is_answered_on_the_loop_without_finishing() -> None:
    call = _Call("tok_1")
    call.commit()
    assert asyncio.run(answered(call.begin)) == "tok_1"
    assert call.finished == 0


def test_anything_else_is_finished_in_a_thread() -> None:
    call = _Call(409)
    call.commit()
    with pytest.raises(LookupError, match="refused: 409"):
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
