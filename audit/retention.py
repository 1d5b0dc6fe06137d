"""Online retention: dropping monthly ``audit_entries`` partitions older than the online
retention, only once every leaf in them is archived and verified in the archive.

IN PCI SCOPE. PCI DSS 10.5.1 asks for twelve months of audit history, three of them
immediately available: the three (``online_months``) stay in the database, the twelve
(or more) are the object store's lifecycle rule (docs/operations.md). A partition is
dropped only when

- every entry in it is sequenced (it has a leaf index),
- the archive recorded in ``audit_archive`` covers its highest leaf,
- the archive in the object store verifies: its manifests are contiguous from leaf 0
  with valid head signatures, the segments that hold the partition's leaves are
  downloaded and verified entry by entry, and the archived head is the database's head
  of the same size (the archive is of this log),

and otherwise `RetentionRefused` names the partition and the reason. The drop, the
``audit_retired`` record (with ``online_from``, where online verification now starts)
and an ``audit.partition.retire`` entry commit together. Key registry records
(``key.register``) the registry would lose with the partition are appended again first,
marked ``carried_forward_from`` (every key a label names there and nowhere online, then
the label's latest: `_carry_forward_key_records`): the registry is read from the log, a
vault whose registry looks empty would adopt the token's keys as found, and one whose
label named two keys would take the one left. So is the newest data
rotation's completion (session 38): the vault refuses every data-key version up to the
one it retired (`data_key_retired`), and without it would use a destroyed key whose
wrapped bytes were put back from a backup.

Runs as the owner role (dropping a table needs it); the app role cannot.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, Engine, Row, func, insert, select, text
from sqlalchemy.exc import SQLAlchemyError

from audit.archive import ObjectStore, verify_archive
from audit.errors import AuditVerificationFailed, RetentionRefused
from audit.log import AuditEvent, AuditLog, Outcome
from audit.partitions import Partition, monthly_partitions
from audit.schema import READ_ONLY, audit_archive, audit_heads, audit_retired
from cofre.dberrors import db_error_name

_REGISTER: Final = "key.register"
# The time a carried copy of a key's registration says the key was registered: its
# original's (or, for a copy of a copy, the one it carries on). Review rev49: the copy
# was dated by its own record, so the cryptoperiod monitor restarted the key's period at
# each retention run (`vault.cryptoperiod`).
REGISTERED_AT: Final = "registered_at"
# A data rotation's completion, as the predicate of migration 0023's partial index
# (``ix_audit_entries_rotation_complete``), word for word: both databases use a partial
# index only for a query that carries its predicate. Canonical payloads sort their keys,
# so "action" is always first.
COMPLETE_RECORDS: Final = """payload LIKE '{"action":"key.rotation.complete",%'"""
# The start records' predicate, that of migration 0021's partial index
# (``ix_audit_entries_rotation_start``): a data completion's start is carried with it.
START_RECORDS: Final = """payload LIKE '{"action":"key.rotation.start",%'"""


def record_object(payload: str) -> dict[str, Any] | None:
    """The log record `payload` as a JSON object, or None when it is none (not JSON, or
    another value): the vault writes objects alone, and a writer of the database may
    insert anything into the log (review rev39), which a reader must pass over rather
    than raise on at each read."""
    try:
        entry = json.loads(payload)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def record_details(payload: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The log record `payload` and its details (an empty object when it has none), or
    None when either is no object: a record the vault never writes (`record_object`)."""
    entry = record_object(payload)
    if entry is None:
        return None
    details = entry.get("details")
    details = {} if details is None else details
    return (entry, details) if isinstance(details, dict) else None


def registration_details(payload: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """`record_details` of a key registration as the vault writes one (action exactly
    ``key.register``, outcome ``success``), else None. Review 49c: the registry read
    every record its SQL predicate matched by its details alone, so a database writer's
    ``key.register`` with outcome ``failed``, or (on SQLite, whose LIKE ignores ASCII
    case) one spelt ``Key.Register``, voided a label while evidence check 6d, which
    counts successful ``key.register`` entries only, saw no registration."""
    parsed = record_details(payload)
    if parsed is None or parsed[0].get("action") != _REGISTER:
        return None
    return parsed if parsed[0].get("outcome") == "success" else None


def data_key_retired(payload: str) -> int | None:
    """The data-key version the log entry `payload` (a `COMPLETE_RECORDS` one) records
    retired and destroyed by a data rotation, or None when it records none: another
    kind's completion (an audit key rotation's says ``old_key_kept_for_verification``;
    since session 38 a data rotation's says ``"kind": "data"``), or one not successful,
    or one the vault never writes (review rev39: not JSON, or details that are no
    object, which a writer of the database may insert into the log for good: it raised
    here, at every data-key unwrap and rotation pass, and stopped both)."""
    entry = record_object(payload)
    details = None if entry is None else entry.get("details")
    if entry is None or not isinstance(details, dict):
        return None
    kind = details.get("kind", "audit" if "old_key_kept_for_verification" in details else "data")
    version = details.get("retired_version")
    if entry.get("action") != "key.rotation.complete" or entry.get("outcome") != "success":
        return None
    return version if kind == "data" and type(version) is int else None


@dataclass(frozen=True, slots=True)
class RetiredPartition:
    name: str
    entries: int
    first_leaf: int | None
    last_leaf: int | None
    online_from: int
    carried_forward: int


def retired_overlapping(engine: Engine, period_from: datetime, period_to: datetime) -> list[str]:
    """The retired partitions whose month overlaps [`period_from`, `period_to`), oldest
    first: their entries are only in the archive now."""
    with engine.execution_options(**READ_ONLY).connect() as connection:
        names = connection.execute(
            select(audit_retired.c.partition)
            .where(audit_retired.c.range_to > period_from, audit_retired.c.range_from < period_to)
            .order_by(audit_retired.c.range_from)
        ).scalars()
        return [str(name) for name in names]


def _months_before(at: datetime, months: int) -> datetime:
    index = at.year * 12 + at.month - 1 - months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def retire_partitions(
    engine: Engine,
    objects: ObjectStore,
    prefix: str,
    public_key_pem: bytes,
    *,
    online_months: int,
    now: datetime,
    actor: str = "cofre audit retire",
    dry_run: bool = False,
) -> list[RetiredPartition]:
    """Drop every monthly partition that ended more than `online_months` calendar months
    before `now`'s month began, oldest first; return what was dropped (or, with
    `dry_run`, what would be, after the same checks).

    Raises `RetentionRefused` naming the first partition that may not be dropped, and
    why (partitions before it stay dropped).
    """
    cutoff = _months_before(now, online_months)
    with engine.connect() as connection:
        due = [p for p in monthly_partitions(connection) if p.range_to <= cutoff]
    return [
        _retire(engine, objects, prefix, public_key_pem, p, actor=actor, dry_run=dry_run)
        for p in due
    ]


def _retire(
    engine: Engine,
    objects: ObjectStore,
    prefix: str,
    pem: bytes,
    partition: Partition,
    *,
    actor: str,
    dry_run: bool,
) -> RetiredPartition:
    name = partition.name  # matched `audit_entries_pYYYYMM`: safe in SQL text
    try:
        with engine.connect() as connection:
            # `name` matched the partition pattern: not input.
            query = (
                "SELECT count(*) AS entries, count(l.leaf_index) AS leaves, "  # noqa: S608
                "min(l.leaf_index) AS first, max(l.leaf_index) AS last FROM "
                f"{name} e LEFT JOIN audit_leaves l ON l.entry_id = e.id"
            )
            row = connection.execute(text(query)).one()
            online_from = int(
                connection.execute(
                    select(func.coalesce(func.max(audit_retired.c.online_from), 0))
                ).scalar_one()
            )
            covering = None
            if row.last is not None:
                covering = connection.execute(
                    select(func.min(audit_archive.c.segment_end)).where(
                        audit_archive.c.segment_end > row.last
                    )
                ).scalar()
    except SQLAlchemyError as exc:
        raise RetentionRefused(f"{name}: cannot read it ({db_error_name(exc)})") from None
    if row.entries != row.leaves:
        raise RetentionRefused(
            f"{name}: {row.entries - row.leaves} of its {row.entries} entries are not "
            "sequenced yet (run `cofre audit sequence`)"
        )
    if row.last is not None:
        if covering is None:
            raise RetentionRefused(
                f"{name}: its leaves {row.first}..{row.last} are not all archived (run "
                "`cofre audit archive`)"
            )
        online_from = max(online_from, int(covering))
        _check_archive(engine, objects, prefix, pem, name, first=int(row.first), end=int(covering))
    retired = RetiredPartition(
        name, int(row.entries), row.first, row.last, online_from, carried_forward=0
    )
    if dry_run:
        return retired
    try:
        with engine.begin() as connection:
            carried = _carry_forward_key_records(connection, name, actor)
            connection.execute(text(f"DROP TABLE {name}"))
            connection.execute(
                insert(audit_retired).values(
                    partition=name,
                    range_from=partition.range_from,
                    range_to=partition.range_to,
                    entries=retired.entries,
                    max_leaf_index=retired.last_leaf,
                    online_from=online_from,
                    retired_at=datetime.now(UTC),
                )
            )
            AuditLog().append(
                connection,
                AuditEvent(
                    action="audit.partition.retire",
                    outcome=Outcome.SUCCESS,
                    actor=actor,
                    details={
                        "partition": name,
                        "entries": retired.entries,
                        "first_leaf": retired.first_leaf,
                        "last_leaf": retired.last_leaf,
                        "online_from": online_from,
                        "carried_forward": carried,
                    },
                ),
            )
    except SQLAlchemyError as exc:
        raise RetentionRefused(f"{name}: the drop failed ({db_error_name(exc)})") from None
    return RetiredPartition(
        name, retired.entries, retired.first_leaf, retired.last_leaf, online_from, carried
    )


def _check_archive(
    engine: Engine,
    objects: ObjectStore,
    prefix: str,
    pem: bytes,
    name: str,
    *,
    first: int,
    end: int,
) -> None:
    """Raise `RetentionRefused` unless the archive verifies through leaf `end` (the
    segments from `first` downloaded) and its head at `end` is this database's."""
    try:
        report = verify_archive(objects, prefix, pem, download_from=first, through=end)
    except AuditVerificationFailed as exc:
        raise RetentionRefused(f"{name}: the archive does not verify: {exc}") from None
    head = report.last_head
    if head is None or head.tree_size < end:
        raise RetentionRefused(f"{name}: the archive holds no head of size {end}")
    with engine.connect() as connection:
        root = connection.execute(
            select(audit_heads.c.root_hash).where(audit_heads.c.tree_size == head.tree_size)
        ).scalar()
    if root is None or bytes(root) != head.root_hash:
        raise RetentionRefused(
            f"{name}: the archived head {head.tree_size} is not this database's head of that "
            "size: the bucket holds another log"
        )


def _carry_forward_key_records(connection: Connection, partition: str, actor: str) -> int:
    """Append again what the key registry would lose with `partition`: for each label,
    the latest record of every key (CKA_ID and check value) the partition registers and
    no record outside it names, in their order, then the label's latest record again
    when that lies outside the partition, so that it is still the last. Review rev38:
    only each label's latest record was carried, so once the partition holding a
    ceremony's own registration went, a substitute registered later under its label
    (6fbdbfd: a label recorded as two keys is never used) was the label's only record,
    and the vault used it. A label whose keys all stay online carries nothing. Then the
    newest data-key retirement (`data_key_retired`, bak38) when it is in the partition.
    Returns how many records were appended."""
    rows = connection.execute(
        text(
            "SELECT e.id, e.payload, e.tableoid::regclass::text AS part, l.leaf_index "
            "FROM audit_entries e LEFT JOIN audit_leaves l ON l.entry_id = e.id "
            "WHERE e.payload LIKE :prefix ORDER BY e.id"
        ),
        {"prefix": f'{{"action":"{_REGISTER}",%'},
    ).all()
    by_label: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
    documents: dict[int, object] = {}
    registered: dict[int, str | None] = {}
    for row in rows:
        parsed = registration_details(row.payload)
        if parsed is None:  # not the vault's: nothing to carry (session 39, review 49c)
            continue
        documents[int(row.id)] = parsed[0].get("document")
        at = parsed[1].get(REGISTERED_AT, parsed[0].get("time"))
        registered[int(row.id)] = at if isinstance(at, str) else None
        by_label.setdefault(str(parsed[1].get("label", "")), []).append((row, parsed[1]))
    count = 0
    for label, records in sorted(by_label.items()):
        online: set[tuple[object, ...]] = set()
        for row, details in records:
            if row.part != partition:  # an online signed record names its key too
                key = _key_of(details, documents[row.id])
                online |= {key, key[:2]}
        latest_of: dict[tuple[object, ...], tuple[Any, dict[str, Any]]] = {}
        for row, details in records:
            key = _key_of(details, documents[row.id])
            if row.part == partition and key not in online:
                latest_of[key] = (row, details)
        carried = sorted(latest_of.values(), key=lambda record: int(record[0].id))
        if carried and carried[-1][0] is not records[-1][0]:
            carried.append(records[-1])
        for row, details in carried:
            AuditLog().append(
                connection,
                AuditEvent(
                    action=_REGISTER,
                    outcome=Outcome.SUCCESS,
                    actor=actor,
                    key_id=label,
                    details={
                        **details,
                        "carried_forward_from": row.leaf_index,
                        REGISTERED_AT: registered[int(row.id)],
                    },
                    # A record the officers signed keeps their signatures: without them
                    # the copy is an unsigned record (`vault._signed_registration`); the
                    # vault writes a document as text alone.
                    document=_text_or_none(documents[row.id]),
                ),
            )
            count += 1
    retired = _newest_data_retirement(connection)
    if retired is not None and retired.part == partition:
        original = json.loads(retired.payload)
        count += _carry_start(connection, partition, original.get("key_id"), actor)
        AuditLog().append(
            connection,
            AuditEvent(
                action=str(original["action"]),
                outcome=Outcome.SUCCESS,
                actor=actor,
                key_id=original.get("key_id"),
                details={**original.get("details", {}), "carried_forward_from": retired.leaf_index},
            ),
        )
        count += 1
    return count


def _text_or_none(document: object) -> str | None:
    """A record's document when it is text (the vault's), else None."""
    return document if isinstance(document, str) else None


def _key_of(details: dict[str, Any], document: object) -> tuple[object, ...]:
    """The key a registry record names (its CKA_ID and check value: the first two), as
    the vault's key registry compares them (`vault.key_registry.KeyIdentity`), then for
    a record that may be one the officers signed (a ceremony and a document) that
    ceremony and document: only the same record online stands for it. Review rev39c: a
    writer's unsigned copy of the genuine key's registration, online, kept the officers'
    repair of a label from being carried, so the retire undid it (the forged record,
    named nowhere online, was carried)."""
    key = (details.get("cka_id"), details.get("check"))
    signed = "ceremony" in details and document is not None
    return (*key, details["ceremony"], document) if signed else key


def _with_leaves(connection: Connection, records: str) -> Sequence[Row[Any]]:
    """The entries `records` (a constant predicate) selects, in log order, each with its
    id, partition and leaf index."""
    return connection.execute(
        text(
            "SELECT e.id, e.payload, e.tableoid::regclass::text AS part, l.leaf_index "  # noqa: S608 - constants, no input
            "FROM audit_entries e LEFT JOIN audit_leaves l ON l.entry_id = e.id "
            f"WHERE e.{records} ORDER BY e.id"
        )
    ).all()


def _carry_start(connection: Connection, partition: str, ceremony: object, actor: str) -> int:
    """Append again the first start of data rotation `ceremony` when it is in
    `partition`, with its officers' signed requests (its document); return how many
    records were appended (0 or 1). The vault counts a data completion only beside its
    ceremony's first proven start (session 40, `vault._retired_keys`)."""
    if not isinstance(ceremony, str):
        return 0
    for row in _with_leaves(connection, START_RECORDS):
        parsed = record_details(row.payload)
        if parsed is None or parsed[0].get("key_id") != ceremony:
            continue
        if row.part != partition:
            return 0  # online: the vault reads it there
        entry, details = parsed
        AuditLog().append(
            connection,
            AuditEvent(
                action=str(entry["action"]),
                outcome=Outcome.SUCCESS,
                actor=actor,
                key_id=ceremony,
                details={**details, "carried_forward_from": row.leaf_index},
                document=_text_or_none(entry.get("document")),
            ),
        )
        return 1
    return 0


def _newest_data_retirement(connection: Connection) -> Any:
    """The row (with its partition and leaf index) of the completion that retired the
    newest data-key version, or None: versions only grow, so every lower one is retired
    with it, and only that record needs to stay online."""
    rows = _with_leaves(connection, COMPLETE_RECORDS)
    found, highest = None, -1
    for row in rows:
        version = data_key_retired(row.payload)
        if version is not None and version > highest:
            found, highest = row, version
    return found
