"""The token store's statements of `vault.operations.tokenize`, kept apart so that
module stays readable in one sitting. They read tokens only, never a PAN in clear.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import ColumnElement, Connection, Row, bindparam, select, update

from vault.errors import StaleRead
from vault.operations._items import _Answers, _Item
from vault.storage.database import as_utc
from vault.storage.rawsql import fetch_all, fetch_records
from vault.storage.schema import tokens

# On the driver's cursor (`vault.storage.rawsql`): every fresh token is checked.
_TAKEN_SQL: Final = "SELECT token FROM tokens WHERE token IN (?*)"

# PostgreSQL: one index search per value sent, as a LATERAL subquery it cannot fold
# into a scan. Sent as an IN list of several values, the value was a Filter on a walk of
# the index's earlier columns whenever the table had grown much since its statistics
# (a new vault's first minutes: every convergent entry of the domain read per call;
# issue 21, once a commit group's calls shared these statements). One value was always
# a search key, which is why single calls never showed it.
_TAKEN_PG: Final = (
    "SELECT sent.token FROM unnest(%b::text[]) AS sent(token)"
    " CROSS JOIN LATERAL (SELECT 1 FROM tokens WHERE token = sent.token LIMIT 1) AS held"
)


def _taken(connection: Connection, candidates: Sequence[str]) -> set[str]:
    """Which of `candidates` (at most 500) the store holds already."""
    if connection.dialect.name == "postgresql":
        rows = fetch_all(connection, _TAKEN_PG, [list(candidates)])
    else:
        rows = fetch_all(connection, _TAKEN_SQL, candidates, in_list=len(candidates))
    return {token for (token,) in rows}


_HELD: Final = (
    select(tokens.c.id).where(tokens.c.fingerprint.in_(bindparam("fps", expanding=True))).limit(1)
)

# Which of these fingerprints does the domain hold a convergent token of, in this format?
# On the driver's cursor (SQLAlchemy's expanding IN was ~0.3 ms a call, issue 21); the
# rows are read for those only. The format binds the middle column of
# `uq_tokens_domain_convergent`: without it PostgreSQL walked every convergent entry of
# the domain (a cost growing with the store). PostgreSQL: see `_TAKEN_PG`.
_ANY_CONVERGENT: Final = (
    "SELECT DISTINCT fingerprint FROM tokens WHERE domain = ? AND format = ? AND convergent"
    " AND fingerprint IN (?*)"
)
_ANY_CONVERGENT_PG: Final = (
    "SELECT sent.fp FROM unnest(%b::bytea[]) AS sent(fp) CROSS JOIN LATERAL (SELECT 1"
    " FROM tokens WHERE domain = %s AND format = %s AND convergent AND fingerprint = sent.fp"
    " LIMIT 1) AS held"
)


def _held_fingerprints(
    connection: Connection, domain: str, token_format: str, fps: Sequence[bytes]
) -> list[bytes]:
    """Which of `fps` (at most 500) have a convergent token in `domain` and `token_format`."""
    if connection.dialect.name == "postgresql":
        rows = fetch_all(connection, _ANY_CONVERGENT_PG, [list(fps), domain, token_format])
    else:
        probe = [domain, token_format, *fps]
        rows = fetch_all(connection, _ANY_CONVERGENT, probe, in_list=len(fps))
    return [bytes(fp) for (fp,) in rows]


# The rows of the fingerprints `_held_fingerprints` found. PostgreSQL: one search per
# value, see `_TAKEN_PG` (with an IN list it walked the domain's convergent entries
# after the table had grown since its statistics: ~5,700 buffers a call at 10^5 tokens).
# Each search finds one row at most (a unique index); its LIMIT 1 keeps PostgreSQL from
# folding the subquery into a join, which walked the entries again.
_CONVERGENT_WHERE: Final = "domain = ? AND format = ? AND convergent AND fingerprint IN (?*)"
_CONVERGENT_PG: Final = (
    "unnest(%b::bytea[]) AS sent(fp) CROSS JOIN LATERAL (SELECT * FROM tokens WHERE"
    " domain = %s AND format = %s AND convergent AND fingerprint = sent.fp LIMIT 1) AS tokens"
)


def _convergent_records(
    connection: Connection, domain: str, token_format: str, fps: Sequence[bytes]
) -> list[Any]:
    """The convergent tokens of `fps` (at most 500) in `domain` and `token_format`."""
    if connection.dialect.name == "postgresql":
        params: list[Any] = [list(fps), domain, token_format]
        return fetch_records(connection, tokens, "true", params, source=_CONVERGENT_PG)
    params = [domain, token_format, *fps]
    return fetch_records(connection, tokens, _CONVERGENT_WHERE, params, in_list=len(fps))


def _convergent_rows(
    connection: Connection, domain: str, items: Sequence[_Item]
) -> dict[tuple[str, bytes], Row[Any]]:
    # Under any fingerprint key version a row may carry (two while one migrates); an
    # item answers only from a token of its own format.
    by_format: dict[str, set[bytes]] = {}
    for item in items:
        if item.convergent:
            by_format.setdefault(item.request.format, set()).update(item.known_fps)
    held: dict[tuple[str, bytes], Row[Any]] = {}
    for token_format, fps in sorted(by_format.items()):
        wanted = sorted(fps)
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            found = _held_fingerprints(connection, domain, token_format, chunk)
            if not found:
                continue
            for row in _convergent_records(connection, domain, token_format, found):
                held[(row.format, bytes(row.fingerprint))] = row
    return held


_BY_IDEMPOTENCY_WHERE: Final = "domain = ? AND idempotency_key IN (?*)"
_BY_IDEMPOTENCY_PG: Final = (
    "unnest(%b::text[]) AS sent(k) CROSS JOIN LATERAL (SELECT * FROM tokens WHERE"
    " domain = %s AND idempotency_key = sent.k LIMIT 1) AS tokens"
)


def _rows_by_idempotency_key(
    connection: Connection, domain: str, items: Sequence[_Item]
) -> dict[str, Any]:  # records read like rows (`fetch_records`)
    # The key is the domain's, whoever in the domain sent it.
    keys = [i.request.idempotency_key for i in items if i.request.idempotency_key]
    if not keys:
        return {}
    if connection.dialect.name == "postgresql":
        source = _BY_IDEMPOTENCY_PG
        rows = fetch_records(connection, tokens, "true", [keys, domain], source=source)
    else:
        params = [domain, *keys]
        rows = fetch_records(connection, tokens, _BY_IDEMPOTENCY_WHERE, params, in_list=len(keys))
    return {row.idempotency_key: row for row in rows}


# The keys an identity used in a domain other than this one. The token store keeps an
# identity's key once (`UniqueConstraint("owner", "idempotency_key")`, from before token
# domains), so such a key cannot be stored again here after a policy moved the identity
# to another domain: refused as a conflict, not met as a unique violation at the insert
# (retried, then an outage: review 39). Searched through that constraint's index.
_KEYS_ELSEWHERE: Final = (
    "SELECT idempotency_key FROM tokens WHERE owner = ? AND idempotency_key IN (?*) AND domain <> ?"
)


def _keys_used_elsewhere(
    connection: Connection, owner: str, domain: str, keys: Sequence[str]
) -> set[str]:
    """Which of `keys` (at most a batch's) `owner` used for a token of another domain."""
    if not keys:
        return set()
    rows = fetch_all(connection, _KEYS_ELSEWHERE, [owner, *keys, domain], in_list=len(keys))
    return {key for (key,) in rows}


def _outlive(
    connection: Connection,
    answers: _Answers,
    index: int,
    wanted: datetime | None,
    asker: int,
) -> None:
    """Make the stored token item `index` was answered live until `wanted` (None:
    for ever) if it would expire sooner, never shorter. The UPDATE's condition keeps
    it monotonic against a stale read or another call; the extension is in the
    entry of `asker`, the item that asked it."""
    record = answers.results[index]
    assert record is not None  # noqa: S101 - `answers.answer` set it
    ends = as_utc(record.expires_at)
    if ends is None or (wanted is not None and wanted <= ends):
        return
    sooner: ColumnElement[bool] = tokens.c.expires_at.is_not(None)
    if wanted is not None:
        sooner = sooner & (tokens.c.expires_at < wanted)
    done = connection.execute(
        update(tokens).where(tokens.c.id == record.token_id, sooner).values(expires_at=wanted)
    ).rowcount
    if not done:  # another call made it live longer still
        stored = connection.execute(
            select(tokens.c.expires_at).where(tokens.c.id == record.token_id)
        ).scalar_one()
        answers.results[index] = dataclasses.replace(record, expires_at=as_utc(stored))
        return
    answers.results[index] = dataclasses.replace(record, expires_at=wanted)
    answers.extended[asker] = wanted


# The stored tokens a call answers, read again just before its audit entries are
# written, share-locked until the commit (PostgreSQL). One statement for the call (a
# merged group's calls: one for them all), and only for a call answered from the store.
_ANSWERED_PG: Final = (
    "SELECT id, deleted_at, expires_at, metadata FROM tokens WHERE id = ANY(%b::text[])"
    " ORDER BY id FOR SHARE"
)


def _confirm_answers(connection: Connection, answers: _Answers) -> None:
    """Make sure every stored token `answers` hands out (a convergent hit, an
    idempotent retry) is answered as it stands at the commit. Their reads took no lock:
    another node may have deleted, purged or updated a token since, and the call then
    answered a shredded token after its delete was answered (its entry after the
    delete's, its life made longer on the tombstone) or a life or metadata an update
    had replaced (session 31). Share-locked here, a delete, purge or update of the row
    that has not committed waits for this commit; one that committed first is seen:
    a shredded row, or a life now shorter than the one answered (an update shortened
    it after the read the call's extension was decided on), raises `StaleRead` (the
    call runs again: a new token, or its key's `TokenDeleted`); metadata changed, or a
    longer life, is answered as it now is. SQLite: nothing to do, its write transaction
    excludes every other from the read to the commit."""
    if connection.dialect.name != "postgresql":
        return
    answered = {
        index: record
        for index, record in enumerate(answers.results)
        if record is not None and index in answers.stored
    }
    if not answered:
        return
    ids = sorted({record.token_id for record in answered.values()})
    rows = {row[0]: row for row in fetch_all(connection, _ANSWERED_PG, [ids])}
    for index, record in answered.items():
        row = rows.get(record.token_id)
        if row is None or row[1] is not None:
            raise StaleRead
        ends, told = as_utc(row[2]), as_utc(record.expires_at)
        if ends is not None and (told is None or ends < told):
            raise StaleRead
        metadata = json.loads(row[3] or "{}")
        if (ends, metadata) != (told, record.metadata):
            answers.results[index] = dataclasses.replace(record, expires_at=ends, metadata=metadata)
