"""Review 42: a failed approval never destroys a key its transaction may have recorded.

A KEK (or fingerprint, or audit) approval creates the new key on the token and registers
it in the approval's transaction. When the approval fails, `discard_unrecorded` destroys
that key so it does not sit on the token unregistered (review 38). It decided by reading
the registry again on a fresh connection: key absent, key destroyed.

On PostgreSQL an error *during COMMIT* (the connection lost once COMMIT was sent) leaves
the outcome open: the server may be committing still, and a fresh read does not see a
transaction until it has finished. The registry then shows the key absent, the key is
destroyed, and a moment later the commit lands: the ceremony runs, the registry records
the key, and the token no longer has it (every data key the rotation re-wraps under it
would be lost). Only a transaction known to have failed before COMMIT was sent, or known
to have aborted, may have its keys destroyed."""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event, select

import vault._ceremony_guards as guards
from audit.schema import audit_entries
from hsm.keys import KeyHierarchy, KeyKind
from hsm.provider import HSMProvider
from tests.support.softhsm import settled_ready
from tests.vault.conftest import ALICE, BOB
from vault.ceremony import CeremonyState
from vault.errors import StorageUnavailable
from vault.rotation import KeyRotation
from vault.service import VaultService
from vault.storage.database import create_database_engine, migrate

_HOLD: int = 0x7465737443  # the advisory lock the test holds to stall a COMMIT


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """The usual engine, with room for a COMMIT the test stalls (its statement timeout
    would otherwise end the stall for it)."""
    engine = create_database_engine(database_url, statement_timeout_ms=60_000)
    migrate(engine)
    yield engine
    engine.dispose()


def _dsn(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def _stall_the_start_at_commit(engine: Engine) -> None:
    """A deferred trigger: the COMMIT of a transaction that starts a ceremony waits for
    the test's advisory lock, then aborts if `commit_fate` says so (what a COMMIT held up
    on the server looks like: sync replication, a slow WAL flush, a stalled network)."""
    with psycopg.connect(_dsn(engine), autocommit=True) as admin:
        admin.execute("CREATE TABLE commit_fate (abort boolean NOT NULL)")
        admin.execute(
            f"""
            CREATE FUNCTION stall_commit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_advisory_xact_lock_shared({_HOLD});
                IF EXISTS (SELECT 1 FROM commit_fate WHERE abort) THEN
                    RAISE EXCEPTION 'refused at commit';
                END IF;
                RETURN NULL;
            END $$"""
        )
        admin.execute(
            "CREATE CONSTRAINT TRIGGER stall_commit AFTER UPDATE ON key_ceremonies "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.state = 'running') "
            "EXECUTE FUNCTION stall_commit()"
        )


@contextmanager
def _lose_the_connection_once_commit_waits(engine: Engine) -> Iterator[list[int]]:
    """At the first COMMIT on `engine` inside, once the server is waiting inside it, cut
    the client's socket: the client sees a lost connection (an OperationalError), the
    server goes on with the COMMIT. Yields a list that gets the server process's id once
    cut."""
    done: list[int] = []

    def cut(pid: int, fd: int) -> None:
        with psycopg.connect(_dsn(engine), autocommit=True) as admin:
            for _ in range(200):
                waiting = admin.execute(
                    "SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchone()
                if waiting is not None and waiting[0] == "advisory":
                    break
                time.sleep(0.02)
            else:
                return
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
        done.append(pid)

    armed = [True]

    def on_commit(connection: Any) -> None:
        if not armed:
            return
        armed.clear()
        raw = connection.connection.dbapi_connection
        threading.Thread(
            target=cut, args=(raw.info.backend_pid, raw.pgconn.socket), daemon=True
        ).start()

    event.listen(engine, "commit", on_commit)
    try:
        yield done
    finally:
        event.remove(engine, "commit", on_commit)


def _registered(service: VaultService) -> dict[str, Any]:
    return service.keyring.registry.registered(fresh=True)


def _leave_the_token_as_found(provider: HSMProvider, before: list[int]) -> None:
    for version in KeyHierarchy(provider).versions(KeyKind.KEK):
        if version not in before:
            provider.destroy_key(f"cofre-kek-v{version}")


@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("fate", ["commits", "aborts"])
def test_a_key_whose_commit_is_still_under_way_is_never_destroyed(
    rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    rotation_provider: HSMProvider,
    monkeypatch: pytest.MonkeyPatch,
    fate: str,
) -> None:
    """The approval's COMMIT is sent and held on the server; the client loses the
    connection. Whatever the transaction turns out to do, its key stays on the token
    until that is known: if it commits, the rotation runs with its key; if it aborts,
    readiness names the stray key, for an operator to destroy (docs/key-ceremony.md)."""
    service, rotation = rig
    monkeypatch.setattr(guards, "SETTLE_SECONDS", 0.3, raising=False)
    before = KeyHierarchy(rotation_provider).versions(KeyKind.KEK)
    label = f"cofre-kek-v{before[-1] + 1}"
    ceremony = rotation.propose(ALICE, "kek")
    _stall_the_start_at_commit(engine)
    holder = psycopg.connect(_dsn(engine), autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(%s)", (_HOLD,))
        if fate == "aborts":
            holder.execute("INSERT INTO commit_fate VALUES (true)")
        with (
            _lose_the_connection_once_commit_waits(engine) as cut,
            pytest.raises(StorageUnavailable),
        ):
            rotation.approve(BOB, ceremony.id)
        assert len(cut) == 1, "the test never saw the COMMIT wait on the server"
        assert rotation_provider.has_key(label), (
            f"{label} was destroyed while the transaction that records it was committing"
        )
        with engine.connect() as connection:
            payloads = connection.execute(select(audit_entries.c.payload)).scalars().all()
        left = [p for p in payloads if '"key.rotation.keys_left"' in p]
        assert len(left) == 1, "no audit entry names the keys left on the token"
        assert label in left[0]
        assert '"outcome":"failed"' in left[0]
        assert '"transaction":null' not in left[0]  # what an operator asks PostgreSQL about
        # The COMMIT the client gave up on now finishes on the server.
        holder.execute("SELECT pg_advisory_unlock(%s)", (_HOLD,))
        for _ in range(250):
            alive = "SELECT 1 FROM pg_stat_activity WHERE pid = %s"
            if holder.execute(alive, (cut[0],)).fetchone() is None:
                break
            time.sleep(0.02)
        if fate == "commits":
            assert label in _registered(service)
            assert rotation.status(ALICE, ceremony.id).state == CeremonyState.RUNNING
            assert rotation_provider.has_key(label)
            settled_ready(service.check_ready)  # recorded and on the token: nothing to do
        else:
            assert label not in _registered(service)
            assert rotation.status(ALICE, ceremony.id).state == CeremonyState.PENDING
            assert label in service.keyring.registry.unregistered()
    finally:
        holder.close()
        _leave_the_token_as_found(rotation_provider, before)


@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_key_whose_commit_the_server_refused_is_destroyed(
    rig: tuple[VaultService, KeyRotation], engine: Engine, rotation_provider: HSMProvider
) -> None:
    """The COMMIT is sent and the server answers with an error (a deferred check failed):
    the transaction aborted, known for certain, so its key goes (review 38 holds on a
    failure at COMMIT too, not only before it)."""
    service, rotation = rig
    before = KeyHierarchy(rotation_provider).versions(KeyKind.KEK)
    ceremony = rotation.propose(ALICE, "kek")
    _stall_the_start_at_commit(engine)
    with psycopg.connect(_dsn(engine), autocommit=True) as admin:
        admin.execute("INSERT INTO commit_fate VALUES (true)")
    try:
        with pytest.raises(StorageUnavailable):
            rotation.approve(BOB, ceremony.id)
        assert KeyHierarchy(rotation_provider).versions(KeyKind.KEK) == before
        assert rotation.status(ALICE, ceremony.id).state == CeremonyState.PENDING
        settled_ready(service.check_ready)
    finally:
        _leave_the_token_as_found(rotation_provider, before)


@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_key_whose_commit_landed_before_the_connection_dropped_is_kept(
    rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    rotation_provider: HSMProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The COMMIT runs to the end, then the client sees an error (the reply lost with
    the connection): the key is recorded, so it stays, and the rotation runs."""
    service, rotation = rig
    before = KeyHierarchy(rotation_provider).versions(KeyKind.KEK)
    label = f"cofre-kek-v{before[-1] + 1}"
    ceremony = rotation.propose(ALICE, "kek")
    real_commit = engine.dialect.do_commit
    lost: type[Exception] = (
        sqlite3.OperationalError if engine.dialect.name == "sqlite" else psycopg.OperationalError
    )

    def commit_then_lose_the_reply(dbapi_connection: Any) -> None:
        real_commit(dbapi_connection)
        monkeypatch.setattr(engine.dialect, "do_commit", real_commit)
        raise lost("server closed the connection unexpectedly")

    monkeypatch.setattr(engine.dialect, "do_commit", commit_then_lose_the_reply)
    try:
        with pytest.raises(StorageUnavailable):
            rotation.approve(BOB, ceremony.id)
        assert rotation_provider.has_key(label), f"{label} destroyed although recorded"
        assert label in _registered(service)
        assert rotation.status(ALICE, ceremony.id).state == CeremonyState.RUNNING
        settled_ready(service.check_ready)
    finally:
        _leave_the_token_as_found(rotation_provider, before)
