"""`DataKeyring.sealing_version` on PostgreSQL (READ COMMITTED) while a data rotation
starts (review 9, Medium 4). The tokenize transaction's SELECT ... FOR SHARE waits on
the rotation's UPDATE of the active row; when the rotation commits, PostgreSQL re-checks
only that row (now 'retiring'), and the statement's snapshot does not see the new
active version the rotation inserted: no row, and a tokenize that only raced a rotation
was answered 503 data_key_missing. Expected: the new active version."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from sqlalchemy import create_engine, insert, update

from vault.errors import DataKeyMissing
from vault.keyring import DataKeyring, KeyPurpose, KeyState
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


def test_sealing_during_a_rotation_start_sees_the_new_version(pg_database: str) -> None:
    engine = create_engine(pg_database)
    try:
        data_keys.create(engine)
        with engine.begin() as c:
            c.execute(insert(data_keys).values(_row(1)))
        keyring = object.__new__(DataKeyring)  # only what sealing_version uses
        keyring._lock = threading.Lock()  # type: ignore[attr-defined]
        keyring._active = {}  # type: ignore[attr-defined]
        keyring._active_read = {}  # type: ignore[attr-defined]
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
