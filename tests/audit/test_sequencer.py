"""The sequencer's thread: the worker processes of one node elect one sequencer on a
lock file (issue 21), and a standby takes over when the leader goes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, create_engine, func, select

from audit.log import AuditEvent, AuditLog, Outcome
from audit.merkle import leaf_hash, root_hash
from audit.schema import audit_entries, audit_heads, audit_leaves, audit_nodes, audit_queue
from audit.sequencer import (
    Sequencer,
    SequencerThread,
    load_compact_range,
    node_lock_path,
    tree_size,
)
from vault.signing import HSMTreeHeadSigner


def _queue(engine: Engine, count: int) -> None:
    with engine.begin() as connection:
        AuditLog().append_many(
            connection, [AuditEvent("test", Outcome.SUCCESS, "someone") for _ in range(count)]
        )


def _queued(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(audit_queue)).scalar_one())


def _until(condition: Callable[[], bool]) -> bool:
    """Wait for `condition` (a generous bound only against a hang, not a measure)."""
    for _ in range(3000):
        if condition():
            return True
        threading.Event().wait(0.01)
    return False


def test_one_sequencer_per_node_and_a_standby_takes_over(
    engine: Engine, signer: HSMTreeHeadSigner, tmp_path: Path
) -> None:
    lock = tmp_path / "sequencer.lock"
    first = SequencerThread(Sequencer(engine, signer), interval=0.01, node_lock=lock)
    second = SequencerThread(Sequencer(engine, signer), interval=0.01, node_lock=lock)
    first.start()
    try:
        assert _until(lambda: first.leading)
        second.start()
        _queue(engine, 5)
        assert _until(lambda: _queued(engine) == 0)
        assert not second.leading  # it stood by: the leader sequenced
        first.stop()
        _queue(engine, 5)
        assert _until(lambda: _queued(engine) == 0)
        assert second.leading
        assert second.alive()
    finally:
        first.stop()
        second.stop()
    assert not second.leading  # a stopped thread lets the lock go


def test_without_a_node_lock_every_thread_sequences(
    engine: Engine, signer: HSMTreeHeadSigner
) -> None:
    thread = SequencerThread(Sequencer(engine, signer), interval=0.01)
    assert thread.leading
    thread.start()
    try:
        _queue(engine, 3)
        assert _until(lambda: _queued(engine) == 0)
    finally:
        thread.stop()


def test_the_node_lock_is_named_by_the_database(tmp_path: Path) -> None:
    database = tmp_path / "vault.sqlite3"
    assert node_lock_path(create_engine(f"sqlite:///{database}")) == Path(
        f"{database}.sequencer-lock"
    )
    assert node_lock_path(create_engine("sqlite://")) is None

    def pg(url: str) -> Path | None:
        return node_lock_path(create_engine(url))

    one = pg("postgresql+psycopg://cofre:hunter2@db:5432/cofre")
    assert one is not None
    assert "hunter2" not in str(one)
    assert one == pg("postgresql+psycopg://cofre:changed@db:5432/cofre")  # same database
    assert one != pg("postgresql+psycopg://cofre:hunter2@db:5432/other")


def test_a_large_integration_stores_the_tree_the_entries_make(
    engine: Engine, signer: HSMTreeHeadSigner
) -> None:
    """Leaves and nodes go in a few multi-row statements (issue 21): more rows than
    one SQLite statement takes, and every stored node is the tree's."""
    _queue(engine, 6000)
    sequencer = Sequencer(engine, signer)
    assert sequencer.run_once(batch=6000) == 6000
    with engine.connect() as c:
        payloads = [
            p
            for (p,) in c.execute(
                select(audit_entries.c.payload)
                .join(audit_leaves, audit_leaves.c.entry_id == audit_entries.c.id)
                .order_by(audit_leaves.c.leaf_index)
            )
        ]
        stored = load_compact_range(c, tree_size(c)).root()
        nodes = c.execute(select(func.count()).select_from(audit_nodes)).scalar_one()
    assert len(payloads) == 6000
    assert stored == root_hash([leaf_hash(p.encode("utf-8")) for p in payloads])
    # Every complete subtree is stored: 6000 // 2**level of them at each level.
    assert nodes == sum(6000 >> level for level in range(13))


def _head_sizes(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        return [int(s) for s in connection.execute(select(audit_heads.c.tree_size)).scalars()]


def test_a_clock_stepped_back_does_not_hold_heads_back(
    engine: Engine, signer: HSMTreeHeadSigner
) -> None:
    """NTP steps a node's clock back an hour (a VM resumed, a bad time source fixed):
    its sequencer compared the time since the last head with the wall clock, found it
    negative, and signed no head by time for that hour (only every
    `sign_every_entries`), so a quiet vault's entries went an hour without a head
    covering them (no evidence, witness lag growing)."""
    now = [1_800_000_000.0]
    sequencer = Sequencer(
        engine, signer, sign_every_entries=1000, sign_every_seconds=10, clock=lambda: now[0]
    )
    _queue(engine, 1)
    sequencer.run_once()
    assert _head_sizes(engine) == [1]
    now[0] -= 3600
    _queue(engine, 1)
    now[0] += 11  # a head's interval later, by the node's new clock
    sequencer.run_once()
    assert sorted(_head_sizes(engine)) == [1, 2]
