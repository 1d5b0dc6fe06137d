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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection

from vault.models import CallContext, TokenRecord
from vault.operations._items import _Item
from vault.operations._statements import _rows_by_idempotency_key
from vault.storage.rawsql import fetch_records, insert_many
from vault.storage.schema import idempotency_keys, tokens

# A recorded key's token row as the key sees it: the row's columns, but for the key, the
# domain and the owner, which are the recorded key's (the token may hold another key, or
# none, and another identity of the domain may have made it).
_KEYED: Final = ("domain", "idempotency_key", "owner")
_COLUMNS: Final = ", ".join(
    f'ik."{c.name}"' if c.name in _KEYED else f't."{c.name}"' for c in tokens.columns
)
_FROM: Final = "idempotency_keys AS ik JOIN tokens AS t ON t.id = ik.token_id"

# The keys sent, recorded in this domain or by this identity in another (the second are
# refused, as on token rows). Searched through the primary key and the owner's index.
_RECORDED: Final = (
    f"(SELECT {_COLUMNS} FROM {_FROM} WHERE ik.idempotency_key IN (?*)"  # noqa: S608 - constants
    " AND (ik.domain = ? OR ik.owner = ?)) AS tokens"
)
# PostgreSQL: one search per key sent (see `_statements._TAKEN_PG`), one through each
# index (with an OR it walked the owner's index for the key, its second column).
_RECORDED_PG: Final = (
    "unnest(%b::text[]) AS sent(k) CROSS JOIN LATERAL"  # noqa: S608 - constants
    f" ((SELECT {_COLUMNS} FROM {_FROM} WHERE ik.domain = %s AND ik.idempotency_key = sent.k)"
    f" UNION ALL (SELECT {_COLUMNS} FROM {_FROM} WHERE ik.owner = %s"
    " AND ik.idempotency_key = sent.k AND ik.domain <> %s)) AS tokens"
)


@dataclass(frozen=True, slots=True)
class KeyedRows:
    """What the keys a call sends were used for before."""

    # Key -> the token row it answers in the call's domain, recorded or on the row.
    by_key: Mapping[str, Any] = field(default_factory=dict)
    # Keys the caller recorded in another domain (a policy moved it since).
    elsewhere: frozenset[str] = frozenset()


NO_KEYS: Final = KeyedRows()


def keyed_rows(
    connection: Connection, owner: str, domain: str, items: Sequence[_Item]
) -> KeyedRows:
    """The token rows the keys of `items` answer in `domain`, and which of them `owner`
    recorded in another domain. No statement when no item has a key."""
    keys = sorted({k for i in items if (k := i.request.idempotency_key) is not None})
    if not keys:
        return NO_KEYS
    by_key = dict(_rows_by_idempotency_key(connection, domain, items))
    if connection.dialect.name == "postgresql":
        params: list[Any] = [keys, domain, owner, domain]
        recorded = fetch_records(connection, tokens, "true", params, source=_RECORDED_PG)
    else:
        params = [*keys, domain, owner]
        recorded = fetch_records(
            connection, tokens, "1 = 1", params, in_list=len(keys), source=_RECORDED
        )
    elsewhere = set()
    for row in recorded:
        if row.domain == domain:
            by_key[row.idempotency_key] = row
        else:
            elsewhere.add(row.idempotency_key)
    return KeyedRows(by_key, frozenset(elsewhere))


def record_keys(  # noqa: PLR0917 - the call's parts, in the order `_answer_items` has them
    connection: Connection,
    domain: str,
    ctxs: Sequence[CallContext],
    results: Sequence[TokenRecord | None],
    first_with_key: Mapping[str, int],
    keyed: KeyedRows,
    now: datetime,
) -> None:
    """Record each key this call used first (`first_with_key`: key -> the first item
    that sent it) with the token its item was answered, new or converged. No statement
    when none is new."""
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
    insert_many(connection, idempotency_keys, rows)
