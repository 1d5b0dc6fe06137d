"""The queue carries each entry's time (migration 0017), so that on PostgreSQL the
sequencer reads every entry from its own partition; rows queued by code before 0017,
without it, are still integrated, in entry id order with the others."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select, text

from audit.log import AuditEvent, AuditLog, Outcome, deferred_appends
from audit.merkle import leaf_hash, root_hash
from audit.partitions import ensure_partitions, monthly_partitions
from audit.schema import audit_entries, audit_leaves, audit_queue
from audit.sequencer import Sequencer, load_compact_range, tree_size
from vault.signing import HSMTreeHeadSigner


def _clock(at: datetime) -> type[datetime]:
    class Clock(datetime):
        @classmethod
        def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
            return at

    return Clock


def _month(months: int) -> datetime:
    """The 10th of the month `months` from now's (negative: back)."""
    now = datetime.now(UTC)
    index = now.year * 12 + now.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 10, 12, 30, 15, 123456, tzinfo=UTC)


def _events(count: int, action: str = "tokenize") -> list[AuditEvent]:
    return [
        AuditEvent(action=action, outcome=Outcome.SUCCESS, actor="svc", token_id=f"t{i}")
        for i in range(count)
    ]


def _queued_as_at_0016(engine: Engine, at: datetime, count: int) -> None:
    """Entries queued as code at migration 0016 queued them: the entry's id alone."""
    with engine.begin() as connection:
        for i in range(count):
            entry_id = connection.execute(
                insert(audit_entries).returning(audit_entries.c.id),
                {"payload": f'{{"older":{i},"at":"{at.isoformat()}"}}', "created_at": at},
            ).scalar_one()
            connection.execute(
                text("INSERT INTO audit_queue (entry_id) VALUES (:id)"), {"id": entry_id}
            )


def test_every_queued_entry_carries_its_entrys_time(engine: Engine) -> None:
    """One entry (`append`), a batch (`append_many`, its template path), and a group's
    deferred entries of two times written in one flush: each queue row holds the time
    written for its own entry, never another's (a queue row with a time that is not
    its entry's would never be read on PostgreSQL)."""
    first, second = _month(-2), _month(0)
    with engine.begin() as connection:
        AuditLog(clock=_clock(first)).append(connection, _events(1, "single")[0])
        AuditLog(clock=_clock(first)).append_many(connection, _events(12, "batch"))
        with deferred_appends(connection) as flush:
            AuditLog(clock=_clock(first)).append_many(connection, _events(9, "group"))
            AuditLog(clock=_clock(second)).append_many(connection, _events(9, "group"))
            flush()
    with engine.connect() as connection:
        rows = connection.execute(
            select(audit_queue.c.created_at, audit_entries.c.created_at).join(
                audit_entries, audit_entries.c.id == audit_queue.c.entry_id
            )
        ).all()
    assert len(rows) == 1 + 12 + 18
    assert all(queued is not None and queued == written for queued, written in rows), rows
    assert {written.astimezone(UTC) for _, written in rows} == {first, second}


def test_entries_queued_by_older_code_are_integrated_in_order_with_new_ones(
    engine: Engine, signer: HSMTreeHeadSigner
) -> None:
    """During a rolling upgrade to 0017 older nodes queue entries with no time. The
    sequencer reads both kinds, in entry id order, a batch at a time across them: over
    several monthly partitions and the default one (a month with no partition) on
    PostgreSQL."""
    months = [_month(-3), _month(-2), _month(0), _month(8)]  # the last: no partition
    with engine.begin() as connection:
        ensure_partitions(connection, from_time=months[0])
        partitions = {p.name for p in monthly_partitions(connection)}
    if engine.dialect.name == "postgresql":
        assert {f"audit_entries_p{at:%Y%m}" for at in months[:3]} <= partitions
        assert f"audit_entries_p{months[3]:%Y%m}" not in partitions
    for at in months:
        with engine.begin() as connection:
            AuditLog(clock=_clock(at)).append_many(connection, _events(2))
        _queued_as_at_0016(engine, at, 2)
        with engine.begin() as connection:
            AuditLog(clock=_clock(at)).append(connection, _events(1, "one")[0])
    sequencer = Sequencer(engine, signer)
    batches = []
    while count := sequencer.run_once(batch=3):
        batches.append(count)
    assert batches == [3] * 6 + [2]
    with engine.connect() as connection:
        assert connection.execute(select(audit_queue.c.entry_id)).all() == []
        leaves = connection.execute(
            select(audit_leaves.c.entry_id, audit_entries.c.payload)
            .join(audit_entries, audit_entries.c.id == audit_leaves.c.entry_id)
            .order_by(audit_leaves.c.leaf_index)
        ).all()
        entry_ids = connection.execute(select(audit_entries.c.id).order_by(audit_entries.c.id))
        stored = load_compact_range(connection, tree_size(connection)).root()
    assert [entry_id for entry_id, _ in leaves] == [entry_id for (entry_id,) in entry_ids]
    assert stored == root_hash([leaf_hash(payload.encode("utf-8")) for _, payload in leaves])
