"""`cofre.blocking`: `may_block` raises only inside `never_blocking`, only on that
thread (the group committer's thread runs a call's work in a copy of its context and
may wait), and the flag is restored on the way out."""

from __future__ import annotations

import threading

import pytest

from cofre.blocking import may_block, may_wait, never_blocking
from cofre.errors import CofreError, WouldBlock


def test_may_block_raises_only_inside_never_blocking() -> None:
    may_block()
    assert may_wait()
    with never_blocking():
        assert not may_wait()
        with pytest.raises(WouldBlock):
            may_block()
        with never_blocking():
            pass
        with pytest.raises(WouldBlock):
            may_block()  # still inside after a nested block ended
    may_block()


def test_another_thread_may_wait_meanwhile() -> None:
    raised: list[BaseException] = []

    def elsewhere() -> None:
        try:
            may_block()
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            raised.append(exc)

    with never_blocking():
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join(10)
    assert raised == []


def test_no_handler_of_errors_or_refusals_catches_it() -> None:
    with never_blocking(), pytest.raises(WouldBlock):
        try:
            may_block()
        except Exception:  # noqa: BLE001 - the point: this does not catch it
            pytest.fail("caught as an Exception")
    assert not issubclass(WouldBlock, Exception)
    assert not issubclass(WouldBlock, CofreError)
