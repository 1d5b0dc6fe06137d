"""Monthly partitions of the audit entries on PostgreSQL: migrating a non-empty log
keeps every row and the tree; inserts never fail for want of a partition; the app role
can have partitions made ahead but cannot drop them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from audit.log import AuditEvent, AuditLog, Outcome
from audit.partitions import (
    default_partition_rows,
    ensure_partitions,
    is_partitioned,
    month_partition,
    monthly_partitions,
)
from audit.sequencer import Sequencer
from audit.store import AuditStore
from vault.signing import HSMTreeHeadSigner
from vault.storage.database import create_database_engine, migrate
from vault.storage.schema_version import MIGRATIONS


class _FixedClock(datetime):
    at = datetime(2026, 1, 15, tzinfo=UTC)

    @classmethod
    def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
        return cls.at


def append_at(engine: Engine, at: datetime, count: int, action: str = "tokenize") -> None:
    """Append `count` entries dated `at` (any month, past or future)."""
    clock = type("Clock", (_FixedClock,), {"at": at})
    log = AuditLog(clock=clock)
    with engine.begin() as connection:
        for i in range(count):
            log.append(
                connection,
                AuditEvent(action=action, outcome=Outcome.SUCCESS, actor="svc", token_id=f"t{i}"),
            )


def _upgrade(engine: Engine, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def _months(now: datetime, back: int) -> list[datetime]:
    out = []
    year, month = now.year, now.month
    for _ in range(back):
        out.append(datetime(year, month, 10, tzinfo=UTC))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return list(reversed(out))


def test_migrating_a_non_empty_log_keeps_every_row_and_the_tree(
    pg_database: str, signer: HSMTreeHeadSigner
) -> None:
    engine = create_database_engine(pg_database)
    try:
        _upgrade(engine, "0004")
        months = _months(datetime.now(UTC), 5)
        for at in months:
            append_at(engine, at, 7)
        sequencer = Sequencer(engine, signer, sign_every_entries=8, sign_every_seconds=3600)
        while sequencer.run_once(batch=8, force_sign=True):
            pass  # a head every 8 leaves
        append_at(engine, months[-1], 3)  # queued, not yet sequenced, across the migration
        store = AuditStore(engine)
        heads_before = store.heads()
        assert [h.tree_size for h in heads_before] == [8, 16, 24, 32, 35]
        with engine.connect() as connection:
            rows_before = connection.execute(
                sa.text("SELECT id, payload, created_at FROM audit_entries ORDER BY id")
            ).all()
        migrate(engine)
        with engine.connect() as connection:
            assert is_partitioned(connection)
            rows_after = connection.execute(
                sa.text("SELECT id, payload, created_at FROM audit_entries ORDER BY id")
            ).all()
            names = [p.name for p in monthly_partitions(connection)]
            assert default_partition_rows(connection) == 0
        assert rows_after == rows_before
        for at in months:
            assert f"audit_entries_p{at:%Y%m}" in names
        # Every entry rehashes to every head signed before the migration.
        after = store.verify(signer.public_key_pem())
        assert (after.entries, after.heads_checked, after.queued) == (35, 5, 3)
        assert store.heads() == heads_before
        # The queued entries and new ones go on with the same ids and tree.
        append_at(engine, datetime.now(UTC), 4)
        sequencer.drain()
        report = store.verify(signer.public_key_pem())
        assert report.entries == 35 + 3 + 4
        assert store.root_at(35) == heads_before[-1].root_hash
    finally:
        engine.dispose()


def test_an_entry_for_a_month_without_partition_lands_in_the_default(
    pg_database: str, signer: HSMTreeHeadSigner
) -> None:
    engine = create_database_engine(pg_database)
    migrate(engine)
    try:
        now = datetime.now(UTC)
        months = [
            datetime(
                now.year + (now.month + k - 1) // 12, (now.month + k - 1) % 12 + 1, 1, tzinfo=UTC
            )
            for k in range(8)
        ]
        append_at(engine, months[5], 2)  # migrate made partitions up to months[3]
        with engine.begin() as connection:
            assert default_partition_rows(connection) == 2
            # The month whose rows sit in the default partition is left alone (creating
            # it would fail); the others are made.
            assert ensure_partitions(connection, months_ahead=6) == 2
            names = {p.name for p in monthly_partitions(connection)}
        assert f"audit_entries_p{months[4]:%Y%m}" in names
        assert f"audit_entries_p{months[6]:%Y%m}" in names
        assert f"audit_entries_p{months[5]:%Y%m}" not in names
        Sequencer(engine, signer).drain()
        assert AuditStore(engine).verify(signer.public_key_pem()).entries == 2
    finally:
        engine.dispose()


def test_app_role_lists_the_partitions_and_counts_the_default_one(pg_database: str) -> None:
    # docs/operations.md: `cofre audit ...` runs as the vault's role (a member of
    # cofre_app), `cofre audit partitions --ensure` included. Counting the default
    # partition read it by name, which only the owner may: the listing failed with
    # `InsufficientPrivilege` for the role the runbook names.
    engine = create_database_engine(pg_database)
    migrate(engine)
    try:
        now = datetime.now(UTC)
        ahead = datetime(now.year + (now.month + 5) // 12, (now.month + 5) % 12 + 1, 2, tzinfo=UTC)
        behind = datetime(now.year - 2, now.month, 2, tzinfo=UTC)
        append_at(engine, now, 3)  # this month's partition
        append_at(engine, ahead, 2)  # past the partitions made ahead: the default one
        append_at(engine, behind, 1)  # before the first partition: the default one too
        with engine.begin() as connection:
            owner_count = default_partition_rows(connection)
        assert owner_count == 3
        with engine.begin() as connection:
            connection.execute(sa.text("SET LOCAL ROLE cofre_app"))
            assert ensure_partitions(connection) == 0
            assert default_partition_rows(connection) == owner_count
            assert any(p.range_from <= now < p.range_to for p in monthly_partitions(connection))
    finally:
        engine.dispose()


def test_app_role_makes_partitions_ahead_but_cannot_drop_or_truncate_them(
    pg_database: str,
) -> None:
    engine = create_database_engine(pg_database)
    migrate(engine)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("SET LOCAL ROLE cofre_app"))
            made = ensure_partitions(connection, months_ahead=6)
        assert made == 3  # migrate made this month and three ahead
        this_month = month_partition(f"audit_entries_p{datetime.now(UTC):%Y%m}")
        assert this_month is not None
        for statement in (
            f"DROP TABLE {this_month.name}",
            f"ALTER TABLE audit_entries DETACH PARTITION {this_month.name}",
            f"TRUNCATE {this_month.name}",
            "TRUNCATE audit_entries_default",
            f"DELETE FROM {this_month.name}",
        ):
            with pytest.raises(DBAPIError), engine.begin() as connection:
                connection.execute(sa.text("SET LOCAL ROLE cofre_app"))
                connection.execute(sa.text(statement))
        # The owner is stopped by the append-only triggers on every partition too.
        append_at(engine, datetime.now(UTC), 1)
        for statement in (f"TRUNCATE {this_month.name}", f"DELETE FROM {this_month.name}"):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
                connection.execute(sa.text(statement))
    finally:
        engine.dispose()


def test_month_partition_names() -> None:
    december = month_partition("audit_entries_p202612")
    assert december is not None
    assert (december.range_from, december.range_to) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert month_partition("audit_entries_default") is None


def test_the_sequencer_makes_partitions_ahead_and_never_fails_for_them(
    pg_database: str, signer: HSMTreeHeadSigner
) -> None:
    engine = create_database_engine(pg_database)
    migrate(engine)
    try:
        with engine.connect() as connection:
            ahead = monthly_partitions(connection)[-1].name
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE {ahead}"))  # empty, months ahead
        append_at(engine, datetime.now(UTC), 2)
        sequencer = Sequencer(engine, signer)
        assert sequencer.run_once() == 2
        assert sequencer.partition_error is None
        with engine.connect() as connection:
            assert monthly_partitions(connection)[-1].name == ahead

        # Partition upkeep failing (here: its function is gone) never stops sequencing.
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE {ahead}"))
            connection.execute(
                sa.text("DROP FUNCTION cofre_audit_ensure_partitions(timestamptz, integer)")
            )
        append_at(engine, datetime.now(UTC), 3)
        sequencer = Sequencer(engine, signer)
        assert sequencer.run_once() == 3
        assert sequencer.partition_error is not None
        assert "cannot make audit partitions ahead" in sequencer.partition_error
    finally:
        engine.dispose()
