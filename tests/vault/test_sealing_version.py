"""`DataKeyring.sealing_version`. On PostgreSQL (READ COMMITTED) while a data rotation
starts (review 9, Medium 4). The tokenize transaction's SELECT ... FOR SHARE waits on
the rotation's UPDATE of the active row; when the rotation commits, PostgreSQL re-checks
only that row (now 'retiring'), and the statement's snapshot does not see the new
active version the rotation inserted: no row, and a tokenize that only raced a rotation
was answered 503 data_key_missing. Expected: the new active version."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, insert, text, update
from sqlalchemy.exc import OperationalError

from vault import keyring as keyring_module
from vault.errors import DataKeyMissing
from vault.keyring import DataKeyring, KeyPurpose, KeyState
from vault.storage.rawsql import fetch_all
from vault.storage.schema import data_keys


def _row(version: int) -> dict[str, object]:
    return {
        "purpose": KeyPurpose.PAN_GCM.value,
        "version": version,
        "wrapped": b"x",
        "wrap_mechanism": "aes-kwp-rfc5649",
        "kek_label": "kek",
        "algorithm": "AES-256",
        "state": KeyState.ACTIVE.value,
        "created_at": datetime.now(UTC),
    }


def _keys_engine(url: str) -> Engine:
    """A `data_keys` table at `url` holding active version 1."""
    engine = create_engine(url)
    data_keys.create(engine)
    with engine.begin() as c:
        c.execute(insert(data_keys).values(_row(1)))
    return engine


def test_sealing_during_a_rotation_start_sees_the_new_version(pg_database: str) -> None:
    engine = _keys_engine(pg_database)
    try:
        keyring = _bare_keyring()
        result: list[object] = []
        rotation = engine.connect()
        rotation.begin()
        rotation.execute(
            update(data_keys)
            .where(data_keys.c.state == KeyState.ACTIVE.value)
            .values(state=KeyState.RETIRING.value)
        )
        rotation.execute(insert(data_keys).values(_row(2)))

        def seal() -> None:
            with engine.begin() as c:
                try:
                    result.append(keyring.sealing_version(c, KeyPurpose.PAN_GCM))
                except DataKeyMissing as exc:
                    result.append(exc)

        worker = threading.Thread(target=seal)
        worker.start()
        worker.join(2)  # blocked on the rotation's row lock (not a timing assertion)
        rotation.commit()
        rotation.close()
        worker.join()
        assert result == [2], result
    finally:
        engine.dispose()


def _bare_keyring() -> DataKeyring:
    keyring = object.__new__(DataKeyring)  # only what sealing_version uses
    keyring._lock = threading.Lock()
    keyring._active = {}
    keyring._active_read = {}
    return keyring


def _counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    real = fetch_all

    def counted(connection: Connection, sql: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(sql)
        return real(connection, sql, *args, **kwargs)

    monkeypatch.setattr(keyring_module, "fetch_all", counted)
    return reads


def test_a_transaction_reads_the_sealing_version_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group commit's operations share one read: its lock holds to the end of the
    transaction, so the version stays the active one (issue 21: one round trip each)."""
    engine = _keys_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    keyring, reads = _bare_keyring(), _counting_reads(monkeypatch)
    with engine.begin() as c:
        assert [keyring.sealing_version(c, KeyPurpose.PAN_GCM) for _ in range(5)] == [1] * 5
    assert len(reads) == 1
    with engine.begin() as c:  # a rotation between transactions is seen by the next one
        c.execute(update(data_keys).values(state=KeyState.RETIRING.value))
        c.execute(insert(data_keys).values(_row(2)))
    with engine.begin() as c:
        assert keyring.sealing_version(c, KeyPurpose.PAN_GCM) == 2
    assert len(reads) == 2
    engine.dispose()


def test_inside_a_savepoint_every_seal_reads_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A savepoint rolled back releases the row locks taken in it (PostgreSQL), so a read
    made in one protects nothing after it: the group commit's guarded run re-reads."""
    engine = _keys_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    keyring, reads = _bare_keyring(), _counting_reads(monkeypatch)
    with engine.begin() as c:
        for _ in range(3):
            savepoint = c.begin_nested()
            assert keyring.sealing_version(c, KeyPurpose.PAN_GCM) == 1
            savepoint.rollback()
    assert len(reads) == 3
    engine.dispose()


def test_the_one_read_keeps_a_rotation_out_until_the_transaction_ends(
    pg_database: str,
) -> None:
    """After the first seal of a transaction, later seals reuse its read; the row lock it
    took still holds a rotation's retiring UPDATE (refused here by lock_timeout, not by
    a clock in the test)."""
    engine = _keys_engine(pg_database)
    try:
        keyring = _bare_keyring()
        with engine.begin() as c:
            assert keyring.sealing_version(c, KeyPurpose.PAN_GCM) == 1
            assert keyring.sealing_version(c, KeyPurpose.PAN_GCM) == 1
            with engine.connect() as rotation, pytest.raises(OperationalError):
                rotation.execute(text("SET lock_timeout = '200ms'"))
                rotation.execute(
                    update(data_keys)
                    .where(data_keys.c.state == KeyState.ACTIVE.value)
                    .values(state=KeyState.RETIRING.value)
                )
    finally:
        engine.dispose()
