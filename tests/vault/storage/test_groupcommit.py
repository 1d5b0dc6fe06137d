"""Group commit on the real databases: operations share a commit, a failing one rolls
back alone, nothing is answered before its commit, and a failed commit fails everyone."""

from __future__ import annotations

import contextvars
import fcntl
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError

import audit._rows
from audit.errors import AuditWriteFailed
from audit.log import AuditEvent, AuditLog, Outcome, request_trail
from tests.support.groups import in_one_group, one_group, submitted_in_one_group
from vault.storage.database import create_database_engine, migrate
from vault.storage.groupcommit import GroupCommitter, Merge


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_database_engine(database_url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY)"))
    yield engine
    engine.dispose()


class Statements:
    """Counts commits and SAVEPOINT statements on an engine."""

    def __init__(self, engine: Engine) -> None:
        self.commits = 0
        self.savepoints = 0
        event.listen(engine, "commit", self._commit)
        event.listen(engine, "before_cursor_execute", self._execute)

    def _commit(self, _conn: Any) -> None:
        self.commits += 1

    def _execute(self, _c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if statement.upper().startswith("SAVEPOINT"):
            self.savepoints += 1


def _insert(item: int) -> Callable[[Connection], int]:
    def work(c: Connection) -> int:
        c.execute(text("INSERT INTO items (id) VALUES (:id)"), {"id": item})
        return item

    return work


def _rows(engine: Engine) -> set[int]:
    with engine.connect() as c:
        return {r for (r,) in c.execute(text("SELECT id FROM items"))}


def test_waiting_operations_share_one_commit_with_no_savepoints(engine: Engine) -> None:
    committer = GroupCommitter(engine)
    counted = Statements(engine)
    try:
        futures = one_group(committer, [_insert(i) for i in range(1, 17)])
    finally:
        committer.close()
    assert [f.result() for f in futures] == list(range(1, 17))
    assert _rows(engine) == set(range(1, 17))
    assert counted.commits == 2  # the holding operation's, then the group's
    assert counted.savepoints == 0


def test_a_failing_operation_rolls_back_alone(engine: Engine) -> None:
    def half_then_fail(c: Connection) -> None:
        c.execute(text("INSERT INTO items (id) VALUES (100)"))
        raise ValueError("refused")

    committer = GroupCommitter(engine)
    counted = Statements(engine)
    try:
        futures = one_group(committer, [_insert(1), half_then_fail, _insert(2)])
    finally:
        committer.close()
    assert futures[0].result() == 1
    assert futures[2].result() == 2
    with pytest.raises(ValueError, match="refused"):
        futures[1].result()
    assert _rows(engine) == {1, 2}  # nothing of the failed operation
    assert counted.savepoints == 3  # the group ran again, a savepoint each


def test_a_database_error_in_one_operation_spares_the_others(engine: Engine) -> None:
    committer = GroupCommitter(engine)
    try:
        one_group(committer, [_insert(7)])
        futures = one_group(committer, [_insert(1), _insert(7), _insert(2)])
    finally:
        committer.close()
    assert futures[0].result() == 1
    assert futures[2].result() == 2
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        futures[1].result()
    assert _rows(engine) == {1, 2, 7}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_failed_commit_fails_every_operation_in_it(engine: Engine) -> None:
    # A deferred constraint is checked at COMMIT: the group's commit itself fails.
    with engine.begin() as c:
        c.execute(text("CREATE TABLE once (k int UNIQUE DEFERRABLE INITIALLY DEFERRED)"))

    def once(c: Connection) -> str:
        c.execute(text("INSERT INTO once (k) VALUES (1)"))
        return "answered"

    committer = GroupCommitter(engine)
    try:
        futures = one_group(committer, [once, once, _insert(5)])
    finally:
        committer.close()
    for future in futures:
        with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
            future.result()
    assert _rows(engine) == set()


def test_an_unreachable_database_fails_the_group_and_the_writer_lives_on(engine: Engine) -> None:
    down = threading.Event()

    def refuse(*_: Any) -> None:
        if down.is_set():
            raise DisconnectionError("database unreachable")

    # While `down` is set, every checkout fails (the pool discards the connection, as it
    # does one that fails its ping, and gives up after its retries).
    event.listen(engine, "checkout", refuse)
    committer = GroupCommitter(engine)
    try:
        held, release = threading.Event(), threading.Event()

        def hold_then_break(_c: Connection) -> None:
            held.set()
            release.wait(10)
            down.set()  # the next group finds the database gone

        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(committer.run, hold_then_break)
            assert held.wait(10)
            futures = [pool.submit(committer.run, _insert(i)) for i in (1, 2, 3)]
            while len(committer._queue) < 3:  # waiting for the group to form
                threading.Event().wait(0.01)
            release.set()
            first.result(10)
            for future in futures:
                with pytest.raises(SQLAlchemyError):
                    future.result(10)
        down.clear()
        assert committer.run(_insert(4)) == 4  # the same writer thread, back at work
    finally:
        committer.close()
    assert _rows(engine) == {4}


def _audited(item: int, actor: str = "someone") -> Callable[[Connection], int]:
    """An operation that inserts an item and appends two audit entries for it."""

    def work(c: Connection) -> int:
        c.execute(text("INSERT INTO items (id) VALUES (:id)"), {"id": item})
        events = [AuditEvent(f"op-{item}", Outcome.SUCCESS, actor) for _ in range(2)]
        AuditLog().append_many(c, events)
        return item

    return work


def _group_with_trails(
    committer: GroupCommitter, works: list[Callable[[Connection], Any]]
) -> list[Future[tuple[Any, list[int]]]]:
    """`one_group`, each operation submitted from a request's own audit trail."""
    held, release = threading.Event(), threading.Event()

    def hold(_c: Connection) -> None:
        held.set()
        release.wait(10)

    def submit(work: Callable[[Connection], Any]) -> tuple[Any, list[int]]:
        with request_trail() as trail:
            return committer.run(work), trail

    pool = ThreadPoolExecutor(len(works) + 1)
    first = pool.submit(committer.run, hold)
    assert held.wait(10)
    futures = [pool.submit(submit, w) for w in works]
    while len(committer._queue) < len(works):
        threading.Event().wait(0.01)
    release.set()
    first.result(10)
    pool.shutdown(wait=True)
    return futures


def _entries(engine: Engine) -> dict[int, str]:
    with engine.connect() as c:
        return {
            int(i): json.loads(p)["action"]
            for i, p in c.execute(text("SELECT id, payload FROM audit_entries"))
        }


def test_a_group_writes_its_audit_entries_in_one_insert(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21: the entries of every operation in a group, one multi-row insert before
    the commit; each request's trail names its own entries. (The insert runs on the
    driver's cursor, where SQLAlchemy's execute events do not see it.)"""
    migrate(engine)
    inserts: list[int] = []
    insert_entries = audit._rows.insert_queued_entries

    def counted(connection: Connection, rows: Sequence[tuple[str, datetime]]) -> Any:
        inserts.append(len(rows))
        return insert_entries(connection, rows)

    monkeypatch.setattr("audit.log.insert_queued_entries", counted)
    committer = GroupCommitter(engine)
    try:
        futures = _group_with_trails(committer, [_audited(i) for i in range(1, 9)])
    finally:
        committer.close()
    entries = _entries(engine)
    for item, future in enumerate(futures, start=1):
        result, trail = future.result()
        assert result == item
        assert len(trail) == 2
        assert {entries[i] for i in trail} == {f"op-{item}"}
    assert len(entries) == 16
    assert inserts == [16]
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM audit_queue")).scalar() == 16


def test_an_operation_whose_audit_entry_is_refused_does_not_happen(engine: Engine) -> None:
    """Fail closed inside a group: the refused entry's operation fails and leaves
    nothing; the others of its group commit with their entries."""
    migrate(engine)
    with engine.begin() as c:
        if engine.dialect.name == "sqlite":
            c.execute(
                text(
                    "CREATE TRIGGER refuse_poison BEFORE INSERT ON audit_entries "
                    "WHEN NEW.payload LIKE '%poison%' BEGIN SELECT RAISE(ABORT, 'no'); END"
                )
            )
        else:
            c.execute(
                text(
                    "ALTER TABLE audit_entries ADD CONSTRAINT refuse_poison "
                    "CHECK (payload NOT LIKE '%poison%') NOT VALID"
                )
            )
    committer = GroupCommitter(engine)
    try:
        works = [_audited(1), _audited(2, actor="poison"), _audited(3)]
        futures = _group_with_trails(committer, works)
    finally:
        committer.close()
    assert futures[0].result()[0] == 1
    assert futures[2].result()[0] == 3
    with pytest.raises(AuditWriteFailed):
        futures[1].result()
    assert _rows(engine) == {1, 3}
    assert sorted(_entries(engine).values()) == ["op-1", "op-1", "op-3", "op-3"]


def _group_keeping_trails(
    committer: GroupCommitter, works: list[Callable[[Connection], Any]]
) -> tuple[list[Future[Any]], list[list[int]]]:
    """`one_group`, each operation run from a request's own audit trail; the trails in
    the order of `works`, whether the operation succeeded or not."""
    trails: list[list[int]] = [[] for _ in works]

    def in_trail(index: int, work: Callable[[Connection], Any]) -> Callable[[], Any]:
        def submit() -> Any:
            with request_trail() as trail:
                trails[index] = trail
                return committer.run(work)

        return submit

    calls = [in_trail(i, w) for i, w in enumerate(works)]
    return submitted_in_one_group(committer, calls), trails


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_failed_commit_leaves_no_entry_in_any_trail(engine: Engine) -> None:
    """The entries were inserted, then the commit failed (a deferred constraint, not a
    retryable conflict): they never became durable, so no request's trail may name
    them; the API writes a request's own `api.request` entry only when its trail is
    empty."""
    migrate(engine)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE once (k int UNIQUE DEFERRABLE INITIALLY DEFERRED)"))

    def once_audited(item: int) -> Callable[[Connection], int]:
        def work(c: Connection) -> int:
            c.execute(text("INSERT INTO once (k) VALUES (1)"))
            return _audited(item)(c)

        return work

    committer = GroupCommitter(engine)
    try:
        # A group: its entries in one insert just before the commit.
        futures, trails = _group_keeping_trails(committer, [once_audited(1), once_audited(2)])
        for future in futures:
            with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
                future.result()
        assert trails == [[], []]
        # Alone, after an operation failed in the group: the guarded transaction, its
        # entries written at once.
        with engine.begin() as c:
            c.execute(text("INSERT INTO once (k) VALUES (1)"))
        futures, trails = _group_keeping_trails(committer, [once_audited(3), _audited_then_fail])
        with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
            futures[0].result()
        assert trails == [[], []]
    finally:
        committer.close()
    assert _entries(engine) == {}


def _audited_then_fail(c: Connection) -> int:
    _audited(50)(c)
    raise ValueError("refused")


def test_an_operation_rolled_back_to_its_savepoint_leaves_no_entry_in_its_trail(
    engine: Engine,
) -> None:
    """In the guarded run each operation writes its entries at once; one that then
    fails rolls back to its savepoint, entries included: its trail is empty, the
    others' name their committed entries."""
    migrate(engine)
    committer = GroupCommitter(engine)
    try:
        futures, trails = _group_keeping_trails(
            committer, [_audited(1), _audited_then_fail, _audited(2)]
        )
    finally:
        committer.close()
    assert [futures[0].result(), futures[2].result()] == [1, 2]
    with pytest.raises(ValueError, match="refused"):
        futures[1].result()
    entries = _entries(engine)
    assert sorted(entries.values()) == ["op-1", "op-1", "op-2", "op-2"]
    assert [sorted(entries[i] for i in trail) for trail in trails] == [
        ["op-1", "op-1"],
        [],
        ["op-2", "op-2"],
    ]


# Operations of one kind run together in a commit group (`groupcommit.Merge`, issue
# 21): their merge function runs once for all of them, in group order, and each gets its
# own answer; a lone one runs its own work; a merge that raises makes every operation run
# alone, as it would have without one.

_CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="committer")


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


def _submitted(committer: GroupCommitter, ops: list[tuple[int, Merge | None]]) -> list[Future[Any]]:
    """`ops` (item, merge) in one group, each from a caller of its own."""

    def submitter(item: int, merge: Merge | None) -> Callable[[], Any]:
        def submit() -> Any:
            _CALLER.set(f"caller-{item}")
            return committer.run(_alone(item), merge)

        return submit

    return in_one_group(committer, [submitter(item, merge) for item, merge in ops])


def test_operations_of_one_kind_run_once_together_and_each_gets_its_answer(
    engine: Engine,
) -> None:
    kind = Inserts()
    committer = GroupCommitter(engine)
    try:
        futures = _submitted(
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
        futures = _submitted(
            committer, [(1, Merge("k", kind.run, 1)), (2, Merge("k", kind.run, 2))]
        )
    finally:
        committer.close()
    assert [f.result(10) for f in futures] == [1, 2]  # the answers of their own work
    assert len(kind.runs) == 1
    assert _rows(engine) == {1, 2}


def test_a_submitted_operation_is_answered_once_committed_and_cannot_be_cancelled(
    engine: Engine,
) -> None:
    """`submit` does not wait (an `async` caller waits on its loop), its future is done
    only after the commit, and nothing can cancel it meanwhile."""
    committer = GroupCommitter(engine)
    held, release = threading.Event(), threading.Event()

    def hold(c: Connection) -> str:
        held.set()
        release.wait(10)
        c.execute(text("INSERT INTO items (id) VALUES (1)"))
        return "stored"

    try:
        future = committer.submit(hold)
        assert held.wait(10)
        assert not future.done()
        assert not future.cancel()
        release.set()
        assert future.result(10) == "stored"
        assert _rows(engine) == {1}  # committed before it was answered
    finally:
        committer.close()


def test_operations_queued_while_the_writer_lock_is_awaited_join_the_group(
    tmp_path: Path,
) -> None:
    """On SQLite a group's `begin` waits for the writer lock while another worker's
    group holds it through its fsync (issue 21): what is queued meanwhile joins the
    group, one commit for all, rather than wait for the lock and an fsync of its own.
    (SQLite only: PostgreSQL's BEGIN waits for nothing.)"""
    engine = create_database_engine(f"sqlite:///{tmp_path / 'g.sqlite3'}")
    with engine.begin() as c:
        c.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY)"))
    lock_path = str(engine.url.database) + ".writer-lock"
    other_worker = open(lock_path, "a+")  # noqa: SIM115 - held across the submissions
    fcntl.flock(other_worker, fcntl.LOCK_EX)
    statements = Statements(engine)
    committer = GroupCommitter(engine)
    try:
        first = committer.submit(_insert(1))
        while committer._queue:  # taken as a group of one, now waiting for the lock
            threading.Event().wait(0.002)
        later = [committer.submit(_insert(item)) for item in (2, 3, 4)]
        threading.Event().wait(0.05)
        fcntl.flock(other_worker, fcntl.LOCK_UN)
        assert [f.result(10) for f in [first, *later]] == [1, 2, 3, 4]
        assert statements.commits == 1
    finally:
        other_worker.close()
        committer.close()
    assert _rows(engine) == {1, 2, 3, 4}
    engine.dispose()
