"""Group commit: concurrent write operations share one database commit.

IN PCI SCOPE. Every vault operation must be durable before it answers, and a durable
commit costs one fsync (SQLite ``synchronous=FULL``, PostgreSQL ``fsync=on``). Under
concurrent load the committer runs the waiting operations in one transaction, commits
once, and only then hands every caller its result. Nothing is answered before the commit
that made it durable; if that commit fails, every operation in it fails. Operations
rarely fail, so a group first runs with no savepoints; if one raises, the group is
rolled back and runs again with each operation in its own savepoint, so that the failing
one rolls back alone. In the unguarded run the operations' audit entries are written
together, in one insert, just before the commit (`audit.log.deferred_appends`). An
entry's id reaches its request's audit trail only once the commit succeeded
(`audit.log.notes_on_commit`): a request whose entries rolled back counts as unaudited,
so the API writes its own entry for it.

Work that locks a row every operation of the group shares (an identity's rate-limit
bucket) can likewise be left to the end of the unguarded run (`before_commit`): the row
is then locked from just before the commit, not from the group's first operation, so a
second worker's group waits for this one's COMMIT only, and the group charges it once.
Should the group run again guarded, it first runs what the unguarded run left for it
(`before_rerun`): the rows the unguarded run meant to lock last are locked first, in
that run's order, so the guarded run, which acts at once in call order, takes no two of
them in an order of its callers' choosing (session 38, rl38).

A database too slow for its statement timeout (or a lock held past its lock timeout)
would otherwise be met again by every operation of the guarded run, one after another:
the last caller of a group of N answered after N + 1 timeouts, and every call of the
worker queued behind the one writer thread meanwhile (review 39). So once an operation
of the guarded run fails on such a timeout, the operations after it in the group are not
run: they fail with that database error (503, nothing written) and those before it keep
their answers.

Operations of one kind may also run together (`Merge`): in the unguarded run, the
operations of a group that share a merge key are handed to one function, which does in
a few statements what each would do in several (single tokenize calls of one identity
run as one batch). That function must answer each exactly what the operation would
answer alone, or raise: then the group runs again guarded, each operation alone.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from sqlalchemy import Connection, Engine

from audit.log import HeldNotes, deferred_appends, notes_on_commit, release_notes

T = TypeVar("T")
MAX_GROUP: Final = 128
_BEFORE_COMMIT: Final = "cofre.before_commit"
_BEFORE_RERUN: Final = "cofre.before_rerun"
# PostgreSQL's query_canceled (statement_timeout) and lock_not_available (lock_timeout).
_TIMEOUT_SQLSTATES: Final = frozenset({"57014", "55P03"})


def _timeout_of(exc: BaseException) -> BaseException | None:
    """The database error behind `exc` when it is a statement or lock timeout, else None.
    Looks through the chain: an edge that translated it (`AuditWriteFailed`, raised
    ``from None``) still holds it as its context."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        original = getattr(current, "orig", None)
        if getattr(original, "sqlstate", None) in _TIMEOUT_SQLSTATES:
            return current
        current = current.__cause__ or current.__context__
    return None


def before_commit(connection: Connection) -> dict[str, Callable[[], None]] | None:
    """The steps the unguarded run of a group on `connection` runs just before its
    commit, by name, in the order first left; None when there is no such run (act at
    once). Leave a step there only if the operation's work meanwhile is undone with the
    transaction: a step that raises rolls the whole group back, and the group then runs
    again with a savepoint per operation and no deferral, which finds whose it was (the
    audit entries' pattern)."""
    steps: dict[str, Callable[[], None]] | None = connection.info.get(_BEFORE_COMMIT)
    return steps


def before_rerun(connection: Connection) -> dict[str, Callable[[Connection], None]] | None:
    """The steps the guarded run of a group on `connection` runs first, on its own
    connection, should the unguarded run fail, by name, in the order first left; None
    outside an unguarded run. A step that raises is rolled back alone and the guarded
    run goes on without it: only a lock order may be left there, nothing an operation
    needs."""
    steps: dict[str, Callable[[Connection], None]] | None = connection.info.get(_BEFORE_RERUN)
    return steps


@contextlib.contextmanager
def _rerun_steps(
    connection: Connection, steps: dict[str, Callable[[Connection], None]]
) -> Iterator[None]:
    connection.info[_BEFORE_RERUN] = steps
    try:
        yield
    finally:
        connection.info.pop(_BEFORE_RERUN, None)


def _run_rerun_steps(
    connection: Connection, steps: dict[str, Callable[[Connection], None]]
) -> None:
    """Run `steps` (`before_rerun`) each in a savepoint: one that fails (a lock
    timeout) is undone, and the operations then lock as they come, as before."""
    for step in steps.values():
        savepoint = connection.begin_nested()
        try:
            step(connection)
        except Exception:  # noqa: BLE001 - an order of locks only: run without it
            savepoint.rollback()
        else:
            savepoint.commit()


@contextlib.contextmanager
def _deferred_steps(connection: Connection) -> Iterator[Callable[[], None]]:
    steps: dict[str, Callable[[], None]] = {}
    connection.info[_BEFORE_COMMIT] = steps

    def run() -> None:
        del connection.info[_BEFORE_COMMIT]  # from now on, callers act at once
        for step in steps.values():
            step()

    try:
        yield run
    finally:
        connection.info.pop(_BEFORE_COMMIT, None)


@dataclass(frozen=True, slots=True)
class Merge:
    """How an operation may run together with others of its kind (module docstring).
    In a group's unguarded run, when two or more operations share `key`, the first's
    `run` gets every one's context and `part` (in group order), runs in the first's
    context, and returns their results in that order; it must raise rather than answer
    any of them other than alone."""

    key: Hashable
    run: Callable[[Connection, Sequence[tuple[contextvars.Context, Any]]], Sequence[Any]]
    part: Any


@dataclass(frozen=True, slots=True)
class _Op:
    work: Callable[[Connection], Any]  # runs in `context`
    future: Future[Any]
    context: contextvars.Context
    merge: Merge | None


def _run_group(connection: Connection, group: list[_Op]) -> list[Any]:
    """Every operation's result, in order; those sharing a merge key run together, at
    the place of the first of them."""
    kinds: dict[Hashable, list[tuple[int, contextvars.Context, Any]]] = {}
    for index, op in enumerate(group):
        if op.merge is not None:
            kinds.setdefault(op.merge.key, []).append((index, op.context, op.merge.part))
    results: list[Any] = [None] * len(group)
    for index, op in enumerate(group):
        members = kinds[op.merge.key] if op.merge is not None else []
        if len(members) <= 1:
            results[index] = op.work(connection)
        elif members[0][0] == index and op.merge is not None:
            parts = [(context, part) for _, context, part in members]
            # In a copy of the first's context: `run` enters each one's own (its audit
            # trail), and a context cannot be entered twice.
            answers = op.context.copy().run(op.merge.run, connection, parts)
            for (member, _, _), answer in zip(members, answers, strict=True):
                results[member] = answer
    return results


class GroupCommitter:
    """One writer thread that commits waiting operations together."""

    def __init__(self, engine: Engine, *, max_group: int = MAX_GROUP) -> None:
        self._engine = engine
        self._max_group = max_group
        self._queue: list[_Op] = []
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="cofre-group-commit", daemon=True)
        self._thread.start()

    def run(self, work: Callable[[Connection], T], merge: Merge | None = None) -> T:
        """Run `work(connection)` in the next group; return its result once committed.
        With `merge`, it may instead run together with others of its kind (`Merge`).

        Raises what `work` raised (its savepoint rolled back), or the database error of
        a failed commit.
        """
        return self.submit(work, merge).result()

    def submit(self, work: Callable[[Connection], T], merge: Merge | None = None) -> Future[T]:
        """`run` without the wait: the future is done once the group that ran `work`
        committed (its result) or failed (what `run` raises). Nothing may cancel it: its
        caller waits for it or leaves it (issue 21: an `async` caller waits on its event
        loop, so no thread is parked for the commit)."""
        future: Future[T] = Future()
        future.set_running_or_notify_cancel()  # from now on `cancel()` refuses
        # The work runs in the writer thread but in the caller's context, so what it
        # notes there (the request's audit trail) is seen by the caller.
        context = contextvars.copy_context()

        def in_context(connection: Connection) -> T:
            return context.run(work, connection)

        with self._cond:
            if self._stopped:
                raise RuntimeError("the group committer is stopped")
            self._queue.append(_Op(in_context, future, context, merge))
            self._cond.notify()
        return future

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def _take(self, room: int) -> list[_Op]:
        """Up to `room` operations from the queue, in order."""
        with self._cond:
            taken = self._queue[:room]
            del self._queue[:room]
        return taken

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if not self._queue:
                    return
                group = self._queue[: self._max_group]
                del self._queue[: self._max_group]
            try:
                self._commit(group)
            except BaseException as exc:  # noqa: BLE001 - the writer thread must live on
                for op in group:
                    if not op.future.done():
                        op.future.set_exception(exc)

    def _commit(self, group: list[_Op]) -> None:
        # A group of one runs unguarded too, so that its deferred steps (`before_commit`)
        # lock their rows as late; if it fails it runs again, as a larger group would.
        rerun: dict[str, Callable[[Connection], None]] = {}
        if self._commit_unguarded(group, rerun):
            return
        self._commit_each_guarded(group, rerun)

    def _commit_unguarded(
        self, group: list[_Op], rerun: dict[str, Callable[[Connection], None]]
    ) -> bool:
        """The common case, where no operation fails: run them all with no savepoints
        (two statements fewer each) and commit. If one raises, roll everything back and
        return False, so the group runs again with a savepoint each; nothing was
        answered, and a result computed here is never handed out unless committed. If
        the database cannot even be reached, the guarded path meets the same error and
        hands it to every caller: nothing here may end the writer thread. What its
        operations leave in `rerun` (`before_rerun`) the guarded run runs first."""
        try:
            connection = self._engine.connect()
        except Exception:  # noqa: BLE001 - the guarded path reports it
            return False
        held: HeldNotes = []
        with connection:
            try:
                transaction = connection.begin()
                # On SQLite, `begin` waited for the writer lock (another worker's group
                # held it through its fsync): what was queued meanwhile joins this group
                # rather than wait for the lock and an fsync of its own.
                group.extend(self._take(self._max_group - len(group)))
                # The group's audit entries go in one multi-row insert before the
                # commit (issue 21: one per operation was ~2 of its 7 statements). A
                # failed flush rolls everything back, and the guarded path, which
                # writes each operation's entries at once, finds whose they were.
                # The deferred steps run last, after the audit insert: the rows they
                # lock (an identity's rate bucket) are then held for the commit only.
                with (
                    notes_on_commit(connection, held),
                    deferred_appends(connection) as flush_audit,
                    _rerun_steps(connection, rerun),
                    _deferred_steps(connection) as run_steps,
                ):
                    results = _run_group(connection, group)
                    flush_audit()
                    run_steps()
            except BaseException:  # noqa: BLE001 - the guarded path finds whose it was
                with contextlib.suppress(Exception):  # a broken connection rolls back alone
                    connection.rollback()
                return False
            try:
                transaction.commit()
            except BaseException as exc:  # noqa: BLE001 - the commit failed: everyone fails
                for op in group:
                    op.future.set_exception(exc)
                return True
        release_notes(held)
        for op, result in zip(group, results, strict=True):
            op.future.set_result(result)
        return True

    def _commit_each_guarded(
        self, group: list[_Op], rerun: dict[str, Callable[[Connection], None]]
    ) -> None:
        outcomes: list[tuple[Future[Any], Any, BaseException | None]] = []
        held: HeldNotes = []
        timed_out: BaseException | None = None  # the timeout that ends the run (above)
        try:
            with self._engine.begin() as connection, notes_on_commit(connection, held):
                _run_rerun_steps(connection, rerun)
                for op in group:
                    work, future = op.work, op.future
                    if timed_out is not None:
                        outcomes.append((future, None, timed_out))
                        continue
                    if len(group) == 1:
                        # Alone: no savepoint needed, the transaction is the operation's.
                        outcomes.append((future, work(connection), None))
                        continue
                    savepoint = connection.begin_nested()
                    mark = len(held)
                    try:
                        result = work(connection)
                    except BaseException as exc:  # noqa: BLE001 - handed to its caller
                        savepoint.rollback()
                        del held[mark:]  # its entries rolled back with it
                        outcomes.append((future, None, exc))
                        timed_out = _timeout_of(exc)
                    else:
                        savepoint.commit()
                        outcomes.append((future, result, None))
        except BaseException as exc:  # noqa: BLE001 - the commit failed: everyone fails
            for op in group:
                if not op.future.done():
                    op.future.set_exception(exc)
            return
        release_notes(held)
        for future, result, error in outcomes:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
