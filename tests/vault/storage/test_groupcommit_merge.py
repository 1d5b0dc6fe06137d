"""Operations of one kind run together in a commit group (`groupcommit.Merge`, issue
21): their merge function runs once for all of them, in group order, and each gets its
own answer; a lone one runs its own work; a merge that raises makes every operation run
alone, as it would have without one."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text

from vault.storage.database import create_database_engine
from vault.storage.groupcommit import GroupCommitter, Merge

_CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="committer")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_database_engine(database_url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY)"))
    yield engine
    engine.dispose()


def _rows(engine: Engine) -> set[int]:
    with engine.connect() as c:
        return {r for (r,) in c.execute(text("SELECT id FROM items"))}


class Inserts:
    """A merge kind: each part is an item to insert; `runs` records each merged run's
    parts and the caller each part's context names."""

    def __init__(self, *, fail: bool = False) -> None:
        self.runs: list[list[tuple[int, str]]] = []
        self.fail = fail

    def run(self, c: Connection, parts: Sequence[tuple[contextvars.Context, Any]]) -> list[int]:
        self.runs.append([(item, context.run(_CALLER.get)) for context, item in parts])
        if self.fail:
            raise RuntimeError("the merged run fails")
        for _, item in parts:
            c.execute(text("INSERT INTO items (id) VALUES (:id)"), {"id": item})
        return [item * 10 for _, item in parts]  # what the merge answers


def _alone(item: int) -> Callable[[Connection], int]:
    def work(c: Connection) -> int:
        c.execute(text("INSERT INTO items (id) VALUES (:id)"), {"id": item})
        return item  # what the operation answers alone

    return work


def _one_group(committer: GroupCommitter, ops: list[tuple[int, Merge | None]]) -> list[Future[Any]]:
    """Submit `ops` (item, merge) from callers of their own while the writer is held, so
    that they form the next group together, in this order."""
    held, release = threading.Event(), threading.Event()

    def hold(_c: Connection) -> None:
        held.set()
        release.wait(10)

    def submit(item: int, merge: Merge | None) -> Any:
        _CALLER.set(f"caller-{item}")
        return committer.run(_alone(item), merge)

    pool = ThreadPoolExecutor(1)
    first = pool.submit(committer.run, hold)
    assert held.wait(10)
    futures = []
    for count, (item, merge) in enumerate(ops, start=1):
        caller = ThreadPoolExecutor(1)
        futures.append(caller.submit(submit, item, merge))
        caller.shutdown(wait=False)
        while len(committer._queue) < count:  # in this order
            threading.Event().wait(0.005)
    release.set()
    first.result(10)
    pool.shutdown(wait=True)
    return futures


def test_operations_of_one_kind_run_once_together_and_each_gets_its_answer(
    engine: Engine,
) -> None:
    kind = Inserts()
    committer = GroupCommitter(engine)
    try:
        futures = _one_group(
            committer,
            [
                (1, Merge("k", kind.run, 1)),
                (2, None),
                (3, Merge("k", kind.run, 3)),
                (4, Merge("other", kind.run, 4)),  # alone of its key: its own work
                (5, Merge("k", kind.run, 5)),
            ],
        )
    finally:
        committer.close()
    assert [f.result(10) for f in futures] == [10, 2, 30, 4, 50]
    # Once, in group order, each part seen in its own caller's context.
    assert kind.runs == [[(1, "caller-1"), (3, "caller-3"), (5, "caller-5")]]
    assert _rows(engine) == {1, 2, 3, 4, 5}


def test_a_merge_that_raises_runs_every_operation_alone(engine: Engine) -> None:
    kind = Inserts(fail=True)
    committer = GroupCommitter(engine)
    try:
        futures = _one_group(
            committer, [(1, Merge("k", kind.run, 1)), (2, Merge("k", kind.run, 2))]
        )
    finally:
        committer.close()
    assert [f.result(10) for f in futures] == [1, 2]  # the answers of their own work
    assert len(kind.runs) == 1
    assert _rows(engine) == {1, 2}
