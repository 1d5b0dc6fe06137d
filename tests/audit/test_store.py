"""The audit log in a real database (SQLite and PostgreSQL): append in the caller's
transaction, sequence, sign, prove, verify; and what an attacker with DBA rights can and
cannot do unnoticed."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from audit.errors import AuditVerificationFailed, AuditWriteFailed, ProofError
from audit.heads import verify_tree_head
from audit.log import _UNMASKED, AuditEvent, AuditLog, Outcome, canonical_payload
from audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from audit.sequencer import Sequencer
from audit.store import AuditStore
from tests.support.audit_trail import break_audit_writes
from vault.signing import HSMTreeHeadSigner
from vault.storage.database import create_database_engine, migrate


def _append(engine: Engine, count: int, start: int = 0) -> None:
    log = AuditLog()
    with engine.begin() as connection:
        for i in range(start, start + count):
            log.append(
                connection,
                AuditEvent(
                    action="tokenize",
                    outcome=Outcome.SUCCESS,
                    actor="spiffe://cofre/payments",
                    request_id=f"req-{i}",
                    token_id=f"tok-{i}",
                ),
            )


def _sequencer(engine: Engine, signer: HSMTreeHeadSigner, every: int = 1000) -> Sequencer:
    return Sequencer(engine, signer, sign_every_entries=every, sign_every_seconds=3600)


def test_append_sequence_sign_prove(engine: Engine, signer: HSMTreeHeadSigner) -> None:
    _append(engine, 37)
    sequencer = _sequencer(engine, signer, every=10)
    assert sequencer.run_once(batch=20) == 20
    assert sequencer.run_once(batch=20) == 17
    assert sequencer.run_once() == 0
    store = AuditStore(engine)
    # A head is due every 10 entries: one after the first batch, one after the second.
    assert [h.tree_size for h in store.heads()] == [20, 37]
    sequencer.drain()
    head = store.latest_head()
    assert head is not None
    assert head.tree_size == 37
    # The head verifies with cryptography and only the exported public key.
    public = serialization.load_pem_public_key(signer.public_key_pem())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(head.signature, head.checkpoint.encode(), ec.ECDSA(hashes.SHA256()))
    verify_tree_head(head, signer.public_key_pem())
    for index in (0, 5, 36):
        proof = store.inclusion_proof(index)
        verify_inclusion(leaf_hash(store.entry(index).encode()), index, 37, proof, head.root_hash)
    first = store.head_at(20)
    assert first is not None
    verify_consistency(20, 37, store.consistency_proof(20, 37), first.root_hash, head.root_hash)
    report = store.verify(signer.public_key_pem())
    assert report.entries == 37
    assert report.heads_checked == 2
    assert report.queued == 0
    with pytest.raises(ProofError):
        store.inclusion_proof(37)


def test_repeated_entry_fields_are_masked_every_time_and_no_pan_is_remembered() -> None:
    # canonical_payload remembers short strings that had nothing to mask (an
    # operation's entries repeat them): a PAN is masked on every entry, never kept.
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    pan_event = AuditEvent(
        action="tokenize",
        outcome=Outcome.FAILED,
        actor="spiffe://cofre/x",
        request_id="5555555555554444",
        details={"note": "card 5555555555554444"},
    )
    first = canonical_payload(pan_event, at)
    assert canonical_payload(pan_event, at) == first
    assert "5555555555554444" not in first
    assert not any("5555555555554444" in text for text in _UNMASKED)
    assert "spiffe://cofre/x" in _UNMASKED
    later = canonical_payload(pan_event, at + timedelta(microseconds=1))
    assert '"time":"2026-01-02T03:04:05.678902Z"' in later
    assert '"time":"2026-01-02T03:04:05.678901Z"' in first


def test_entries_are_canonical_json_without_pans(engine: Engine, signer: HSMTreeHeadSigner) -> None:
    log = AuditLog()
    with engine.begin() as connection:
        log.append(
            connection,
            AuditEvent(
                action="tokenize",
                outcome=Outcome.FAILED,
                actor="spiffe://cofre/x",
                request_id="4111111111111111",
                details={"note": "card 4111 1111 1111 1111", "n": 3},
            ),
        )
    _sequencer(engine, signer).drain()
    payload = AuditStore(engine).entry(0)
    assert "4111111111111111" not in payload
    assert "4111 1111 1111 1111" not in payload
    assert "411111******1111" in payload
    assert payload.startswith('{"action":"tokenize","actor":')
    assert ": " not in payload
    with pytest.raises(TypeError), engine.begin() as connection:
        log.append(
            connection,
            AuditEvent(action="x", outcome=Outcome.SUCCESS, actor="a", details={"f": 1.5}),
        )  # type: ignore[dict-item]


@pytest.mark.parametrize("table", ["audit_entries", "audit_leaves", "audit_nodes", "audit_heads"])
def test_update_and_delete_refused(engine: Engine, signer: HSMTreeHeadSigner, table: str) -> None:
    _append(engine, 3)
    _sequencer(engine, signer).drain()
    column = {
        "audit_entries": "created_at = created_at",
        "audit_leaves": "entry_id = entry_id",
        "audit_nodes": "hash = hash",
        "audit_heads": "key_id = key_id",
    }[table]
    for statement in (f"UPDATE {table} SET {column}", f"DELETE FROM {table}"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(sa.text(statement))


def test_app_role_has_no_update_or_delete_grant(
    pg_database: str, signer: HSMTreeHeadSigner
) -> None:
    engine = create_database_engine(pg_database)
    migrate(engine)
    _append(engine, 2)
    try:
        for statement in (
            "UPDATE audit_entries SET payload = 'x'",
            "DELETE FROM audit_entries",
            "TRUNCATE audit_entries",
        ):
            with pytest.raises(DBAPIError, match="permission denied"), engine.begin() as conn:
                conn.execute(sa.text("SET LOCAL ROLE cofre_app"))
                conn.execute(sa.text(statement))
        with engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL ROLE cofre_app"))
            conn.execute(
                sa.text("INSERT INTO audit_queue SELECT id FROM audit_entries WHERE false")
            )
            conn.execute(sa.text("DELETE FROM audit_queue WHERE false"))
    finally:
        engine.dispose()


def _drop_guards(engine: Engine) -> None:
    """What an attacker with DBA rights does first."""
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            for table in ("audit_entries", "audit_leaves"):
                for verb in ("update", "delete"):
                    connection.execute(sa.text(f"DROP TRIGGER {table}_no_{verb}"))
        else:
            for table in ("audit_entries", "audit_leaves"):
                connection.execute(sa.text(f"DROP TRIGGER {table}_append_only ON {table}"))


def _prepare(engine: Engine, signer: HSMTreeHeadSigner) -> AuditStore:
    _append(engine, 40)
    sequencer = _sequencer(engine, signer, every=16)
    sequencer.drain()
    store = AuditStore(engine)
    store.verify(signer.public_key_pem())
    _drop_guards(engine)
    return store


def _entry_id(engine: Engine, index: int) -> int:
    with engine.execution_options(cofre_read_only=True).connect() as connection:
        return int(
            connection.execute(
                sa.text("SELECT entry_id FROM audit_leaves WHERE leaf_index = :i"), {"i": index}
            ).scalar_one()
        )


def test_tamper_change_one_entry(engine: Engine, signer: HSMTreeHeadSigner) -> None:
    store = _prepare(engine, signer)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE audit_entries SET payload = replace(payload, 'req-23', 'req-24') "
                "WHERE id = :id"
            ),
            {"id": _entry_id(engine, 23)},
        )
    with pytest.raises(AuditVerificationFailed, match="leaf index 23") as info:
        store.verify(signer.public_key_pem())
    assert info.value.index == 23


def test_tamper_delete_a_row(engine: Engine, signer: HSMTreeHeadSigner) -> None:
    store = _prepare(engine, signer)
    victim = _entry_id(engine, 17)
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM audit_leaves WHERE entry_id = :id"), {"id": victim})
        connection.execute(sa.text("DELETE FROM audit_entries WHERE id = :id"), {"id": victim})
    with pytest.raises(AuditVerificationFailed, match="17") as info:
        store.verify(signer.public_key_pem())
    assert info.value.index == 17


def test_tamper_delete_entry_only(engine: Engine, signer: HSMTreeHeadSigner) -> None:
    store = _prepare(engine, signer)
    victim = _entry_id(engine, 5)
    with engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        if engine.dialect.name == "sqlite":
            # Outside any transaction, where SQLite honours it.
            cursor.execute("PRAGMA foreign_keys=OFF")
            cursor.execute("DELETE FROM audit_entries WHERE id = ?", (victim,))
        else:
            cursor.execute("SET session_replication_role = replica")
            cursor.execute("DELETE FROM audit_entries WHERE id = %s", (victim,))
            cursor.execute("SET session_replication_role = DEFAULT")
        raw.commit()
        cursor.close()
    with pytest.raises(AuditVerificationFailed, match="leaf index 5 has been removed"):
        store.verify(signer.public_key_pem())


def test_tamper_swap_two_rows(engine: Engine, signer: HSMTreeHeadSigner) -> None:
    store = _prepare(engine, signer)
    a, b = _entry_id(engine, 30), _entry_id(engine, 31)
    with engine.begin() as connection:
        pa = connection.execute(
            sa.text("SELECT payload FROM audit_entries WHERE id=:i"), {"i": a}
        ).scalar_one()
        pb = connection.execute(
            sa.text("SELECT payload FROM audit_entries WHERE id=:i"), {"i": b}
        ).scalar_one()
        connection.execute(
            sa.text("UPDATE audit_entries SET payload=:p WHERE id=:i"), {"p": pb, "i": a}
        )
        connection.execute(
            sa.text("UPDATE audit_entries SET payload=:p WHERE id=:i"), {"p": pa, "i": b}
        )
    with pytest.raises(AuditVerificationFailed, match="leaf index 30") as info:
        store.verify(signer.public_key_pem())
    assert info.value.index == 30


def test_tamper_truncate_the_tail(engine: Engine, signer: HSMTreeHeadSigner) -> None:
    store = _prepare(engine, signer)
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM audit_leaves WHERE leaf_index >= 35"))
    with pytest.raises(AuditVerificationFailed, match="from leaf index 35 were removed"):
        store.verify(signer.public_key_pem())


def test_head_signed_by_another_key(
    engine: Engine, signer: HSMTreeHeadSigner, hsm_provider: object
) -> None:
    _append(engine, 3)
    _sequencer(engine, signer).drain()
    other = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(AuditVerificationFailed, match="does not verify"):
        AuditStore(engine).verify(other)


def test_failed_audit_write_rolls_back_the_operation(engine: Engine) -> None:
    """Fail closed: the operation's own row and its audit entry commit together or not."""
    break_audit_writes(engine)
    log = AuditLog()
    with (
        pytest.raises(AuditWriteFailed, match="operation is refused"),
        engine.begin() as connection,
    ):
        connection.execute(
            sa.text(
                "INSERT INTO data_keys (purpose, version, wrapped, wrap_mechanism, kek_label, "
                "algorithm, state, created_at) VALUES ('t', 1, :w, 'm', 'k', 'a', 's', "
                "CURRENT_TIMESTAMP)"
            ),
            {"w": b"\x00"},
        )
        log.append(connection, AuditEvent(action="x", outcome=Outcome.SUCCESS, actor="a"))
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM data_keys")).scalar_one() == 0
        assert connection.execute(sa.text("SELECT count(*) FROM audit_entries")).scalar_one() == 0


def test_concurrent_sequencers_keep_one_tree(engine: Engine, signer: HSMTreeHeadSigner) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []
    sequencers = [_sequencer(engine, signer, every=7) for _ in range(3)]

    def sequence(s: Sequencer) -> None:
        while not stop.is_set():
            try:
                s.run_once(batch=13)
            except BaseException as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

    def write(offset: int) -> None:
        for i in range(10):
            _append(engine, 5, start=offset * 1000 + i * 5)

    threads = [threading.Thread(target=sequence, args=(s,)) for s in sequencers]
    writers = [threading.Thread(target=write, args=(w,)) for w in range(3)]
    for t in threads + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    sequencers[0].drain()
    report = AuditStore(engine).verify(signer.public_key_pem())
    assert report.entries == 150
    assert report.queued == 0
    assert report.heads_checked >= 2


def test_token_ids_are_not_masked(engine: Engine, signer: HSMTreeHeadSigner) -> None:
    # A UUID whose last group is twelve decimal digits (one in ~290 are).
    token_id = "3814562a-74c9-424e-aa39-123456789012"
    with engine.begin() as connection:
        AuditLog().append(
            connection,
            AuditEvent(action="tokenize", outcome=Outcome.SUCCESS, actor="a", token_id=token_id),
        )
    Sequencer(engine, signer).drain()
    assert f'"token_id":"{token_id}"' in AuditStore(engine).entry(0)
