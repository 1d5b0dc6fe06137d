"""The committer's statements on the driver's cursor (issue 21) store and find exactly
what SQLAlchemy's would, and a driver error is SQLAlchemy's exception for it."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.exc import IntegrityError

from vault.storage.rawsql import execute, fetch_all, fetch_records, insert_many, insert_rows
from vault.storage.schema import tokens


def _row(token: str) -> dict[str, Any]:
    now = datetime(2026, 12, 1, 10, 30, 5, 123456, tzinfo=UTC)
    return {
        "id": f"id-{token}",
        "token": token,
        "format": "pan_bin6_last4",
        "convergent": True,
        "fingerprint": secrets.token_bytes(32),
        "fp_version": 1,
        "key_version": 1,
        "nonce": secrets.token_bytes(12),
        "ciphertext": secrets.token_bytes(40),
        "metadata": '{"a": 1}',
        "owner": "spiffe://cofre/payments",
        "domain": "payments",
        "idempotency_key": None,
        "created_at": now,
        "expires_at": now + timedelta(days=1),
    }


def test_insert_many_stores_what_sqlalchemy_stores(engine: Engine) -> None:
    ours, theirs = _row("4111110000001111"), _row("4111110000002222")
    with engine.begin() as c:
        insert_many(c, tokens, [ours])
        c.execute(insert(tokens), [theirs])
    with engine.connect() as c:
        stored = {r.token: r._asdict() for r in c.execute(select(tokens))}
        # The stored text of the dates too (SQLite keeps SQLAlchemy's own format).
        dates = {
            r[0]: tuple(r[1:])
            for r in c.execute(text("SELECT token, created_at, expires_at FROM tokens"))
        }
    for written in (ours, theirs):
        row = stored[written["token"]]
        assert {k: row[k] for k in written} | {"created_at": None, "expires_at": None} == (
            written | {"created_at": None, "expires_at": None}
        )
        assert row["created_at"].replace(tzinfo=UTC) == written["created_at"]
    assert dates[ours["token"]] == dates[theirs["token"]]


def test_insert_many_stores_a_batch_with_nulls_as_sqlalchemy_would(engine: Engine) -> None:
    # A batch's rows: a column null in some rows (idempotency keys), one null in all of
    # them (no expiry), hundreds of rows (PostgreSQL sends each column as one array).
    ours = [_row(f"42222200000{i:05d}") for i in range(600)]
    theirs = [_row(f"43333300000{i:05d}") for i in range(3)]
    for i, row in enumerate([*ours, *theirs]):
        row["id"] = f"id-{row['token']}"
        row["idempotency_key"] = f"key-{row['token']}" if i % 2 else None
        row["expires_at"] = None
        row["convergent"] = bool(i % 3)
    with engine.begin() as c:
        insert_many(c, tokens, ours)
        c.execute(insert(tokens), theirs)
    with engine.connect() as c:
        stored = {r.token: r._asdict() for r in c.execute(select(tokens))}
    assert len(stored) == len(ours) + len(theirs)
    for written in [*ours, *theirs]:
        row = stored[written["token"]]
        assert row["created_at"].replace(tzinfo=UTC) == written["created_at"]
        assert {k: row[k] for k in written if k != "created_at"} == {
            k: v for k, v in written.items() if k != "created_at"
        }


def test_fetch_all_expands_in_lists(engine: Engine) -> None:
    with engine.begin() as c:
        insert_many(c, tokens, [_row(f"41111100000{i:05d}") for i in range(3)])
        found = fetch_all(
            c,
            "SELECT token FROM tokens WHERE format = ? AND token IN (?*)",
            ["pan_bin6_last4", "4111110000000000", "4111110000000002", "9"],
            in_list=3,
        )
    assert sorted(t for (t,) in found) == ["4111110000000000", "4111110000000002"]


def test_insert_rows_writes_a_large_batch_and_ignores_conflicts(engine: Engine) -> None:
    into = 'oracle_watch (identity, bucket, "window", item)'
    rows = [("someone", b"b" * 16, 60, i.to_bytes(32, "big")) for i in range(8000)]
    with engine.begin() as c:
        insert_rows(c, into, rows, then="ON CONFLICT DO NOTHING")  # two statements
        insert_rows(c, into, rows[:10], then="ON CONFLICT DO NOTHING")
        count = fetch_all(c, "SELECT count(*) FROM oracle_watch WHERE identity = ?", ["someone"])
    assert count == [(8000,)]


def test_a_driver_error_is_sqlalchemys(engine: Engine) -> None:
    with engine.begin() as c:
        insert_many(c, tokens, [_row("4111110000003333")])
    with pytest.raises(IntegrityError), engine.begin() as c:
        insert_many(c, tokens, [_row("4111110000003333")])  # the same id and token


def test_fetch_records_reads_what_sqlalchemy_reads(engine: Engine) -> None:
    written = [_row("4111110000004444"), _row("4111110000005555") | {"convergent": False}]
    with engine.begin() as c:
        insert_many(c, tokens, written)
    with engine.connect() as c:
        ours = fetch_records(
            c, tokens, "token IN (?*)", [r["token"] for r in written], in_list=len(written)
        )
        theirs = {r.token: r._asdict() for r in c.execute(select(tokens))}
    assert len(ours) == 2
    for record in ours:
        # The same values and types: datetimes, not SQLite's text; booleans, not 0/1.
        assert record._asdict() == theirs[record.token]
        assert isinstance(record.convergent, bool)
        assert isinstance(record.created_at, datetime)


def test_execute_counts_the_rows_it_changed(engine: Engine) -> None:
    with engine.begin() as c:
        insert_many(c, tokens, [_row(f"41111100001{i:05d}") for i in range(3)])
        moved = execute(
            c,
            "UPDATE tokens SET metadata = ? WHERE token IN (?, ?)",
            ["{}", "4111110000100000", "4111110000100002"],
        )
        none = execute(c, "UPDATE tokens SET metadata = ? WHERE token = ?", ["{}", "9"])
    assert (moved, none) == (2, 0)
