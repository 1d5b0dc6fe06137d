"""Monthly partitions of ``audit_entries`` on PostgreSQL: creating them ahead, listing
them, and the SQL the migration installs.

IN PCI SCOPE. ``audit_entries`` is range-partitioned by ``created_at`` (UTC months,
named ``audit_entries_pYYYYMM``) with a default partition, so an insert never fails for
want of a partition: an audit write must never be refused for housekeeping. Partitions
are created ahead by ``cofre_audit_ensure_partitions``, a ``SECURITY DEFINER`` function
owned by the migration role, which the least-privileged ``cofre_app`` role may call
(it cannot create tables itself): the sequencer calls it about once an hour, `cofre db
migrate` and `cofre audit partitions` call it too. A month whose rows already sit in the
default partition (the clock ran ahead of the partitions) is left there and reported;
those rows stay online until an operator moves them (docs/operations.md).

Dropping a partition is `audit.retention`'s work, and only after its leaves were
archived and verified. SQLite keeps one unpartitioned table: nothing here applies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import Connection, text

DEFAULT_PARTITION: Final = "audit_entries_default"
MONTHS_AHEAD: Final = 3
_NAME: Final = re.compile(r"^audit_entries_p([0-9]{4})([0-9]{2})$")

ENSURE_FUNCTION_SQL: Final = r"""
CREATE OR REPLACE FUNCTION cofre_audit_ensure_partitions(
    from_time timestamptz, months_ahead integer
) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    first_month date := date_trunc('month', from_time AT TIME ZONE 'UTC')::date;
    last_month date := (date_trunc('month', now() AT TIME ZONE 'UTC')
                        + make_interval(months => months_ahead))::date;
    lower_bound date;
    upper_bound date;
    name text;
    made integer := 0;
BEGIN
    IF first_month > last_month THEN
        first_month := last_month;
    END IF;
    lower_bound := first_month;
    WHILE lower_bound <= last_month LOOP
        upper_bound := (lower_bound + interval '1 month')::date;
        name := 'audit_entries_p' || to_char(lower_bound, 'YYYYMM');
        IF to_regclass('public.' || name) IS NULL AND NOT EXISTS (
            SELECT 1 FROM public.audit_entries_default
            WHERE created_at >= (lower_bound::text || ' 00:00:00+00')::timestamptz
              AND created_at < (upper_bound::text || ' 00:00:00+00')::timestamptz
        ) THEN
            EXECUTE format(
                'CREATE TABLE public.%I PARTITION OF public.audit_entries '
                'FOR VALUES FROM (%L) TO (%L)',
                name, lower_bound::text || ' 00:00:00+00', upper_bound::text || ' 00:00:00+00'
            );
            -- Row triggers are cloned from the parent; a statement trigger is not, and
            -- a partition can be truncated by name.
            EXECUTE format(
                'CREATE TRIGGER %I BEFORE TRUNCATE ON public.%I '
                'FOR EACH STATEMENT EXECUTE FUNCTION cofre_append_only()',
                name || '_no_truncate', name
            );
            made := made + 1;
        END IF;
        lower_bound := upper_bound;
    END LOOP;
    RETURN made;
END
$$
"""


@dataclass(frozen=True, slots=True)
class Partition:
    """One monthly partition: rows with ``range_from <= created_at < range_to``."""

    name: str
    range_from: datetime
    range_to: datetime


def month_partition(name: str) -> Partition | None:
    """Return the `Partition` a monthly partition name stands for (None for others)."""
    match = _NAME.match(name)
    if match is None:
        return None
    year, month = int(match.group(1)), int(match.group(2))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return Partition(name, start, end)


def is_partitioned(connection: Connection) -> bool:
    """True when ``audit_entries`` is a partitioned table (PostgreSQL after 0005)."""
    if connection.dialect.name != "postgresql":
        return False
    kind = connection.execute(
        text("SELECT relkind FROM pg_class WHERE oid = to_regclass('public.audit_entries')")
    ).scalar()
    return kind == "p"


def ensure_partitions(
    connection: Connection, *, from_time: datetime | None = None, months_ahead: int = MONTHS_AHEAD
) -> int:
    """Create the monthly partitions from `from_time`'s month (default: now) to
    `months_ahead` months from now that are missing; return how many were made. A no-op
    on SQLite. Raises SQLAlchemy's errors: the caller decides whether they matter."""
    if not is_partitioned(connection):
        return 0
    made = connection.execute(
        text("SELECT cofre_audit_ensure_partitions(:from_time, :ahead)"),
        {"from_time": from_time or datetime.now(UTC), "ahead": months_ahead},
    ).scalar_one()
    return int(made)


def monthly_partitions(connection: Connection) -> list[Partition]:
    """The monthly partitions attached to ``audit_entries``, oldest first (none on
    SQLite)."""
    if not is_partitioned(connection):
        return []
    names = connection.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass('public.audit_entries')"
        )
    ).scalars()
    found = [month_partition(str(name)) for name in names]
    return sorted((p for p in found if p is not None), key=lambda p: p.range_from)


def default_partition_rows(connection: Connection) -> int:
    """How many entries sit in the default partition (0 on SQLite): rows written for a
    month that had no partition yet."""
    if not is_partitioned(connection):
        return 0
    # Counted through the parent: the vault's role may read `audit_entries` but not its
    # partitions by name, and `cofre audit partitions` runs as that role
    # (docs/operations.md). A row is in the default partition exactly when no monthly
    # partition's range holds its time (PostgreSQL refuses a partition for a range the
    # default holds rows of), and the planner prunes the scan to the default partition.
    outside: list[str] = []
    bounds: dict[str, datetime] = {}
    for i, partition in enumerate(monthly_partitions(connection)):
        outside.append(f"(created_at < :from_{i} OR created_at >= :to_{i})")
        bounds[f"from_{i}"], bounds[f"to_{i}"] = partition.range_from, partition.range_to
    where = " AND ".join(outside) or "true"
    # Only generated placeholders go into the text; the bounds are bound parameters.
    query = text(f"SELECT count(*) FROM audit_entries WHERE {where}")  # noqa: S608
    return int(connection.execute(query, bounds).scalar_one())
