"""Review 37: a key registration's held time and the log's order (PostgreSQL).

Review 36b gave a ceremony's later entries the time of its key registration
(`AuditLog.append(hold=True)`), so that a period holds the registration and the start
together. But a fingerprint rotation registered its new key first, then counted the
stored fingerprints to move (a scan of the tokens, seconds on a large vault), then wrote
the start with the registration's time. An entry another node wrote meanwhile took its
place in the log between the two, dated after the start: the log's times no longer
followed its order, which the evidence verifier assumes (check 4b: "Entry times follow
leaf order"; the entries check fails "an entry of the range dated outside the period").
A period that ended within the count then covered the start and, before it in the log,
that later entry: the genuine bundle FAILED, and the next one began before it ended.

Now the registration is written after the count, next to the start. Real PostgreSQL
(the count held by a table lock), SoftHSM2 (the session's rotation token), the API.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from audit.log import AuditEvent, AuditLog, Outcome
from audit.schema import audit_entries
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault


@pytest.fixture
def vault(
    tmp_path: Path, rotation_provider: HSMProvider, pg_database: str
) -> Iterator[VaultServer]:
    before = {key.label for key in rotation_provider.list_keys()}
    try:
        with running_vault(tmp_path / "vault", rotation_provider, pg_database) as server:
            yield server
    finally:
        # The session's rotation token keeps no key of this test's: another vault on it
        # would adopt it at its first start.
        for key in rotation_provider.list_keys():
            if key.label not in before:
                rotation_provider.destroy_key(key.label)


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _entries(vault: VaultServer) -> list[tuple[int, str, datetime]]:
    with vault.runtime.engine.connect() as connection:
        rows = connection.execute(
            select(
                audit_entries.c.id, audit_entries.c.payload, audit_entries.c.created_at
            ).order_by(audit_entries.c.id)
        ).all()
    return [(int(i), json.loads(payload)["action"], at) for i, payload, at in rows]


def _waiting_on_tokens(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(
            "SELECT count(*) FROM pg_locks WHERE relation = 'tokens'::regclass AND NOT granted"
        ).fetchone()
    return bool(row and row[0])


def test_finding_an_entry_written_during_a_rotations_start_is_not_dated_after_it(
    vault: VaultServer, pg_database: str
) -> None:
    """Low (fixed). Before: the other node's entry sat between the registration and the
    start in the log, dated after both."""
    dsn = _dsn(pg_database)
    result: dict[str, Any] = {}
    with psycopg.connect(dsn) as lock:
        # The rotation's count of the fingerprints to move waits here.
        lock.execute("LOCK TABLE tokens IN ACCESS EXCLUSIVE MODE")
        rotation = threading.Thread(
            target=lambda: result.update(vault.approved_rotation("fingerprint"))
        )
        rotation.start()
        deadline = time.monotonic() + 30
        while not _waiting_on_tokens(dsn):
            assert time.monotonic() < deadline
            assert rotation.is_alive(), result
            time.sleep(0.05)
        time.sleep(0.05)  # the clock moves on: the other node's entry is later
        with vault.runtime.engine.begin() as connection:
            AuditLog().append(
                connection,
                AuditEvent(action="policy.reload", outcome=Outcome.SUCCESS, actor="other-node"),
            )
        lock.rollback()
    rotation.join(30)
    assert result.get("state") == "running", result
    entries = _entries(vault)
    [start] = [e for e in entries if e[1] == "key.rotation.start"]
    # Every entry the log places before the start is dated at or before it.
    later = [(i, action, at) for i, action, at in entries if i < start[0] and at > start[2]]
    assert not later, (start, later)
