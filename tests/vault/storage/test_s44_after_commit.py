"""Session 44: `after_commit`, what a process may believe of the database only once a
commit group is durable (a rate lease, `vault._rate_leases`): its steps run after the
group's commit succeeded, and never for a group that rolled back, that ran again guarded
or whose commit failed. A lease granted for a rolled-back charge would admit calls no
row was charged for. And `after_rollback` (review 44), what a group's first run spent in
memory and gives back when it rolls back before its COMMIT: run then only, not after a
commit and not when the COMMIT itself failed (the database may have made it durable)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Connection, Engine, text

from tests.support.groups import in_one_group
from vault.storage.database import create_database_engine
from vault.storage.groupcommit import GroupCommitter, after_commit, after_rollback


def _engine(url: str) -> Iterator[Engine]:
    engine = create_database_engine(url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY)"))
        c.execute(text("CREATE TABLE once (k int UNIQUE DEFERRABLE INITIALLY DEFERRED)"))
    yield engine
    engine.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    yield from _engine(database_url)


@pytest.fixture
def pg_engine(pg_database: str) -> Iterator[Engine]:
    """PostgreSQL alone: SQLite checks a UNIQUE at each statement, so no commit of its
    fails the way `_once`'s does."""
    yield from _engine(pg_database)


def _rows(engine: Engine) -> set[int]:
    with engine.connect() as c:
        return {r for (r,) in c.execute(text("SELECT id FROM items"))}


class _Steps:
    """Operations that leave an after-commit step; what each step saw when it ran."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ran: list[tuple[int, set[int]]] = []
        self.outside: list[int] = []  # operations run where there was no such list
        self.given_back: list[int] = []

    def insert(self, item: int) -> Callable[[Connection], int]:
        def work(c: Connection) -> int:
            c.execute(text("INSERT INTO items (id) VALUES (:id)"), {"id": item})
            steps, undone = after_commit(c), after_rollback(c)
            if steps is None or undone is None:
                assert steps is None
                assert undone is None
                self.outside.append(item)
            else:
                steps.append(lambda: self.ran.append((item, _rows(self.engine))))
                undone.append(lambda: self.given_back.append(item))
            return item

        return work


def _fail(_c: Connection) -> int:
    raise ValueError("this operation fails")


def _once(c: Connection) -> int:
    c.execute(text("INSERT INTO once (k) VALUES (1)"))
    return 0


def _group(engine: Engine, works: list[Callable[[Connection], int]]) -> list[object]:
    committer = GroupCommitter(engine)
    try:
        futures = in_one_group(committer, [functools.partial(committer.run, w) for w in works])
    finally:
        committer.close()
    return [f.exception() or f.result() for f in futures]


def test_steps_run_once_the_group_is_durable(engine: Engine) -> None:
    steps = _Steps(engine)
    assert _group(engine, [steps.insert(1), steps.insert(2)]) in ([1, 2], [2, 1])
    # Each step saw both rows from a connection of its own: committed before it ran.
    assert sorted(steps.ran) == [(1, {1, 2}), (2, {1, 2})]
    assert steps.given_back == []


def test_no_step_of_a_group_that_ran_again_guarded(engine: Engine) -> None:
    steps = _Steps(engine)
    answers = _group(engine, [steps.insert(1), steps.insert(2), _fail])  # in this order
    assert 1 in answers
    assert 2 in answers
    # The first run's steps went with its rollback; the guarded run has no such list.
    assert steps.ran == []
    assert sorted(steps.given_back) == [1, 2]  # what the first run spent, given back
    assert sorted(steps.outside) == [1, 2]
    assert _rows(engine) == {1, 2}


def test_no_step_of_a_group_whose_commit_failed(pg_engine: Engine) -> None:
    steps = _Steps(pg_engine)
    answers = _group(pg_engine, [_once, _once, steps.insert(3)])  # the COMMIT fails
    assert all(isinstance(a, Exception) for a in answers)
    assert steps.ran == []
    assert steps.given_back == []
    assert _rows(pg_engine) == set()
