"""Idempotency keys: the token each key sent answers, read from both places a key is
kept, and the keys a call records (review tok, F2).

IN PCI SCOPE: reads token rows (never a PAN in clear). A token row holds the key of the
call that made it, as it always did (code before migration 0018 reads keys there alone:
a rolling upgrade). A key first answered by convergence could not be kept there (one
token may answer many keys, and `UniqueConstraint("owner", "idempotency_key")` holds an
identity's key once, review 39), so it was recorded nowhere and another card could take
it. Every key's first answer is now recorded in ``idempotency_keys`` too, in the
transaction of that answer: its primary key makes two first uses of one key in a domain
meet (the loser's transaction runs again and finds the winner's), also when one of them
answers by convergence. A key sent is read in both; a recorded key wins over a token
row's, which only code at 0017 racing a recorded key's first answer could write.

A record is remembered for a window (`COFRE_TOKENS__IDEMPOTENCY_KEY_TTL_HOURS`, 24 h by
default, at most 168 h): lookups ignore an older one and the purge removes it
(`forget_keys`), so one card sent with N keys no longer adds N rows for ever (review 27).
Lookups compare the record's age themselves, so an answer never depends on when the
purge last ran. A key on a token row is not forgotten: it is that token's, as before
0018, and grows only with the tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Column, Connection, DateTime, MetaData, Table, bindparam, text

from vault.models import CallContext, TokenRecord
from vault.operations._items import _Item
from vault.operations._statements import _rows_by_idempotency_key
from vault.storage.database import as_utc
from vault.storage.rawsql import execute, fetch_records, insert_many
from vault.storage.schema import idempotency_keys, tokens

# A recorded key's token row as the key sees it: the row's columns, but for the key, the
# domain and the owner, which are the recorded key's (the token may hold another key, or
# none, and another identity of the domain may have made it).
_KEYED: Final = ("domain", "idempotency_key", "owner")
_COLUMNS: Final = ", ".join(
    f'ik."{c.name}"' if c.name in _KEYED else f't."{c.name}"' for c in tokens.columns
)
_FROM: Final = "idempotency_keys AS ik JOIN tokens AS t ON t.id = ik.token_id"
# And when the key was recorded: a record older than the window is ignored here, in
# Python, not by the query, so that the call learns which of its keys have such a record
# to remove before recording them again, without another statement.
_COLUMNS_AND_AGE: Final = f'{_COLUMNS}, ik."created_at" AS key_created_at'
_KEYED_TOKENS: Final = Table(
    "tokens",
    MetaData(),
    *(Column(c.name, c.type) for c in tokens.columns),
    Column("key_created_at", DateTime(timezone=True)),
)

# The keys sent, recorded in this domain or by this identity in another (the second are
# refused, as on token rows). Searched through the primary key and the owner's index.
_RECORDED: Final = (
    f"(SELECT {_COLUMNS_AND_AGE} FROM {_FROM} WHERE ik.idempotency_key IN (?*)"  # noqa: S608 - constants
    " AND (ik.domain = ? OR ik.owner = ?)) AS tokens"
)
# PostgreSQL: one search per key sent (see `_statements._TAKEN_PG`), one through each
# index (with an OR it walked the owner's index for the key, its second column).
_RECORDED_PG: Final = (
    "unnest(%b::text[]) AS sent(k) CROSS JOIN LATERAL"  # noqa: S608 - constants
    f" ((SELECT {_COLUMNS_AND_AGE} FROM {_FROM} WHERE ik.domain = %s"
    f" AND ik.idempotency_key = sent.k) UNION ALL (SELECT {_COLUMNS_AND_AGE} FROM {_FROM}"
    " WHERE ik.owner = %s AND ik.idempotency_key = sent.k AND ik.domain <> %s)) AS tokens"
)
# Before recording keys: the records of them older than the window, which lookups
# ignored but the primary key and the owner's unique index still hold until the purge.
# Never a younger one: a key recorded within the window was answered from it instead.
_STALE: Final = (
    "DELETE FROM idempotency_keys WHERE idempotency_key IN (?*)"
    " AND (domain = ? OR owner = ?) AND created_at <= ?"
)
# The purge: the oldest records past the window, a batch a transaction, through
# migration 0019's index on ``created_at`` (no long lock, no scan of the young ones).
_FORGET: Final = text(
    "DELETE FROM idempotency_keys WHERE (domain, idempotency_key) IN"
    " (SELECT domain, idempotency_key FROM idempotency_keys WHERE created_at <= :cutoff"
    " ORDER BY created_at LIMIT :batch)"
).bindparams(bindparam("cutoff", type_=DateTime(timezone=True)), bindparam("batch"))


@dataclass(frozen=True, slots=True)
class KeyedRows:
    """What the keys a call sends were used for before."""

    # Key -> the token row it answers in the call's domain, recorded or on the row.
    by_key: Mapping[str, Any] = field(default_factory=dict)
    # Keys the caller recorded in another domain (a policy moved it since).
    elsewhere: frozenset[str] = frozenset()
    # Keys with a record older than the window, in this domain or the caller's in
    # another: ignored above, removed before the key is recorded again.
    stale: frozenset[str] = frozenset()


NO_KEYS: Final = KeyedRows()


def _moment(connection: Connection, value: datetime) -> Any:
    """`value` as the driver's statements compare it with ``created_at`` (SQLite keeps
    SQLAlchemy's text form, not the driver's)."""
    processor = idempotency_keys.c.created_at.type._cached_bind_processor(connection.dialect)
    return value if processor is None else processor(value)


def keyed_rows(
    connection: Connection, owner: str, domain: str, items: Sequence[_Item], since: datetime
) -> KeyedRows:
    """The token rows the keys of `items` answer in `domain`, and which of them `owner`
    recorded in another domain, of the records made after `since` (the window's start)
    and the token rows whenever. No statement when no item has a key."""
    keys = sorted({k for i in items if (k := i.request.idempotency_key) is not None})
    if not keys:
        return NO_KEYS
    by_key = dict(_rows_by_idempotency_key(connection, domain, items))
    if connection.dialect.name == "postgresql":
        params: list[Any] = [keys, domain, owner, domain]
        recorded = fetch_records(connection, _KEYED_TOKENS, "true", params, source=_RECORDED_PG)
    else:
        params = [*keys, domain, owner]
        recorded = fetch_records(
            connection, _KEYED_TOKENS, "1 = 1", params, in_list=len(keys), source=_RECORDED
        )
    elsewhere, stale = set(), set()
    for row in recorded:
        recorded_at = as_utc(row.key_created_at)
        assert recorded_at is not None  # noqa: S101 - the column is NOT NULL
        if recorded_at <= since:  # compared here, not in the query: `_COLUMNS_AND_AGE`
            stale.add(row.idempotency_key)
        elif row.domain == domain:
            by_key[row.idempotency_key] = row
        else:
            elsewhere.add(row.idempotency_key)
    return KeyedRows(by_key, frozenset(elsewhere), frozenset(stale))


def record_keys(  # noqa: PLR0917 - the call's parts, in the order `_answer_items` has them
    connection: Connection,
    domain: str,
    ctxs: Sequence[CallContext],
    results: Sequence[TokenRecord | None],
    first_with_key: Mapping[str, int],
    keyed: KeyedRows,
    now: datetime,
    since: datetime,
) -> None:
    """Record each key this call used first (`first_with_key`: key -> the first item
    that sent it) with the token its item was answered, new or converged, after removing
    its records from before `since` (the window's start). No statement when none is
    new."""
    rows = []
    for key, index in first_with_key.items():
        result = results[index]
        if key in keyed.by_key or result is None:
            continue
        rows.append(
            {
                "domain": domain,
                "idempotency_key": key,
                "owner": ctxs[index].identity,
                "token_id": result.token_id,
                "created_at": now,
            }
        )
    keys = [str(row["idempotency_key"]) for row in rows]
    if keyed.stale.intersection(keys):
        _forget_stale(connection, domain, ctxs[0].identity, keys, since)
    insert_many(connection, idempotency_keys, rows)


def _forget_stale(
    connection: Connection, domain: str, owner: str, keys: Sequence[str], since: datetime
) -> None:
    """Remove the records of `keys` from before `since` that would hold the primary key
    or the owner's unique index against recording them again."""
    # Two calls forgetting one stale record meet on it (PostgreSQL: the second waits for
    # the first's commit, then deletes nothing and meets its record at the insert). A
    # call with a key runs alone, never merged with another identity's (`_tokenize`).
    params = [*keys, domain, owner, _moment(connection, since)]
    execute(connection, _STALE, params, in_list=len(keys))


def forget_keys(connection: Connection, cutoff: datetime, batch: int) -> int:
    """Remove at most `batch` records made at or before `cutoff`, oldest first; return
    how many went."""
    return connection.execute(_FORGET, {"cutoff": cutoff, "batch": batch}).rowcount
