"""Witnessed checkpoints end to end: the vault's publisher, a `cofre witness serve`
process, and the two findings of issue 23 that the operator's own key cannot catch.

- The reviewer's rewrite: with the HSM PIN, remove one entry, rebuild the tree and
  re-sign every head. `AuditStore.verify` (the operator's key alone) still says OK;
  the witness refuses the rewritten head and `verify_witnessed` names what is wrong.
- The point-in-time restore: heads restored with their entries, new writes on top. The
  witness refuses the rolled-back log and `verify_witnessed` fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select

from audit.errors import AuditVerificationFailed
from audit.heads import log_origin, log_verifier_key
from audit.log import AuditEvent, AuditLog, Outcome
from audit.note import CosignerKey, VerifierKey, open_note
from audit.publisher import (
    INVALID_COSIGNATURE,
    REFUSED,
    REFUSED_REASON,
    UNREACHABLE,
    CheckpointPublisher,
    PinnedWitness,
    witnessed_note,
)
from audit.schema import audit_cosignatures, audit_entries, audit_leaves, audit_queue
from audit.sequencer import Sequencer
from audit.store import AuditStore
from audit.witness_lag import Lag, witness_lag
from audit.witnessed import verify_witnessed
from tests.support.witness_process import WitnessProcess
from vault.signing import HSMTreeHeadSigner
from vault.storage.database import create_database_engine, migrate
from witness.client import submit_checkpoint


@pytest.fixture
def witness(tmp_path: Path, signer: HSMTreeHeadSigner) -> Iterator[WitnessProcess]:
    vkey = log_verifier_key(log_origin("cofre"), signer.public_key_pem()).encode()
    process = WitnessProcess(tmp_path / "witness", [vkey])
    process.start()
    yield process
    process.stop()


@pytest.fixture
def other_engine(tmp_path: Path) -> Iterator[Engine]:
    """A second store: the rewritten or restored copy of the log."""
    engine = create_database_engine(f"sqlite:///{tmp_path / 'copy.sqlite3'}")
    migrate(engine)
    yield engine
    engine.dispose()


def _append(engine: Engine, count: int, tag: str = "req") -> None:
    log = AuditLog()
    with engine.begin() as connection:
        for i in range(count):
            log.append(
                connection,
                AuditEvent(
                    action="detokenize",
                    outcome=Outcome.SUCCESS,
                    actor="spiffe://cofre/settlement",
                    request_id=f"{tag}-{i}",
                ),
            )


def _sequence(engine: Engine, signer: HSMTreeHeadSigner) -> None:
    Sequencer(engine, signer, sign_every_entries=10_000, sign_every_seconds=3600).drain()


def _publisher(
    engine: Engine, signer: HSMTreeHeadSigner, witness: WitnessProcess
) -> CheckpointPublisher:
    def submit(pinned: PinnedWitness, body: bytes) -> tuple[int, str, str]:
        answer = submit_checkpoint(pinned.url, body)
        return answer.status, answer.content_type, answer.text

    pinned = PinnedWitness(witness.url, VerifierKey.parse(witness.vkey))
    return CheckpointPublisher(engine, [pinned], signer.public_key_pem, submit)


def _replay(
    source: Engine, target: Engine, *, skip: int | None = None, upto: int = 1 << 40
) -> None:
    """Copy the entries of `source` (leaf order) into `target`'s queue, as an operator
    rebuilding the log (without `skip`) or a restore (the first `upto`) would."""
    with source.connect() as connection:
        rows = connection.execute(
            select(audit_entries.c.payload, audit_entries.c.created_at)
            .join(audit_leaves, audit_leaves.c.entry_id == audit_entries.c.id)
            .order_by(audit_leaves.c.leaf_index)
        ).all()
    with target.begin() as connection:
        for index, row in enumerate(rows[:upto]):
            if index == skip:
                continue
            new_id = connection.execute(
                insert(audit_entries).values(payload=row.payload, created_at=row.created_at)
            ).inserted_primary_key
            assert new_id is not None
            connection.execute(insert(audit_queue).values(entry_id=new_id[0]))


def _copy_cosignatures(source: Engine, target: Engine, upto_size: int = 1 << 40) -> None:
    with source.connect() as connection:
        rows = connection.execute(
            select(audit_cosignatures).where(audit_cosignatures.c.tree_size <= upto_size)
        ).all()
    with target.begin() as connection:
        for row in rows:
            connection.execute(insert(audit_cosignatures).values(**row._mapping))


def _keys(witness: WitnessProcess) -> list[VerifierKey]:
    return [VerifierKey.parse(witness.vkey)]


def test_heads_are_published_and_cosigned(
    engine: Engine, signer: HSMTreeHeadSigner, witness: WitnessProcess
) -> None:
    publisher = _publisher(engine, signer, witness)
    assert publisher.publish_once() == {}  # no head yet: nothing to publish
    _append(engine, 10)
    _sequence(engine, signer)
    assert publisher.publish_once() == {witness.key.name: "cosigned 10"}
    assert publisher.publish_once() == {witness.key.name: "current"}
    _append(engine, 5, "more")
    _sequence(engine, signer)
    assert publisher.publish_once() == {witness.key.name: "cosigned 15"}  # with a proof
    store = AuditStore(engine)
    assert verify_witnessed(engine, store.heads(), _keys(witness), 1) == 2
    with pytest.raises(AuditVerificationFailed, match="1 of the 2 witness cosignatures"):
        verify_witnessed(engine, store.heads(), _keys(witness), 2)
    with pytest.raises(AuditVerificationFailed, match="no witness key pinned"):
        verify_witnessed(engine, store.heads(), [], 1)
    head = store.latest_head()
    assert head is not None
    note = witnessed_note(engine, head, signer.public_key_pem())
    log_key = log_verifier_key(head, signer.public_key_pem())
    _, verified = open_note(note, [log_key, *_keys(witness)])
    assert [v.key.name for v in verified] == ["cofre-audit/cofre", witness.key.name]


def test_a_witness_that_is_down_does_not_block_and_is_retried(
    engine: Engine, signer: HSMTreeHeadSigner, witness: WitnessProcess
) -> None:
    publisher = _publisher(engine, signer, witness)
    url = witness.url
    witness.stop()
    _append(engine, 3)
    _sequence(engine, signer)  # writes and heads go on without the witness
    outcome = publisher.publish_once()[witness.key.name]
    assert "did not answer" in outcome
    assert publisher.last_errors[witness.key.name] == outcome
    with pytest.raises(AuditVerificationFailed, match="newest tree head 3 is not witnessed"):
        verify_witnessed(engine, AuditStore(engine).heads(), _keys(witness), 1)
    witness.start()
    publisher.witnesses = [PinnedWitness(witness.url, publisher.witnesses[0].key)]
    assert url  # a new port after the restart; the state file is the same
    assert publisher.publish_once() == {witness.key.name: "cosigned 3"}
    assert not publisher.last_errors


def test_the_reviewers_rewrite_fails_verification_and_is_refused(
    engine: Engine, other_engine: Engine, signer: HSMTreeHeadSigner, witness: WitnessProcess
) -> None:
    _append(engine, 12)
    _sequence(engine, signer)
    assert _publisher(engine, signer, witness).publish_once() == {witness.key.name: "cosigned 12"}
    # The operator removes entry 4 (a full-PAN detokenize), rebuilds the tree, re-signs
    # every head with the HSM key, keeps the old cosignatures, and pads back to 12.
    _replay(engine, other_engine, skip=4)
    _append(other_engine, 1, "padding")
    _sequence(other_engine, signer)
    _copy_cosignatures(engine, other_engine)
    rewritten = AuditStore(other_engine)
    rewritten.verify(signer.public_key_pem())  # the operator's key alone: no complaint
    heads = rewritten.heads()
    with pytest.raises(
        AuditVerificationFailed,
        match=r"tree head 12: the cosignature by witness witness\.test/w1 does not verify",
    ):
        verify_witnessed(other_engine, heads, _keys(witness), 1)
    # The witness will not cosign the rewritten head: same size, another root (422).
    outcome = _publisher(other_engine, signer, witness).publish_once()[witness.key.name]
    assert "inconsistent with the size 12 it cosigned" in outcome
    # Nor any head that grows from it.
    _append(other_engine, 2, "later")
    _sequence(other_engine, signer)
    outcome = _publisher(other_engine, signer, witness).publish_once()[witness.key.name]
    assert "rewritten or forked" in outcome
    # 12 entries, the refusal's audit entry (audit.witness.refused) and 2 more.
    with pytest.raises(AuditVerificationFailed, match="newest tree head 15 is not witnessed"):
        verify_witnessed(other_engine, AuditStore(other_engine).heads()[-1:], _keys(witness), 1)
    assert "FORK OR ROLLBACK" in _stopped_output(witness)


def test_a_restored_log_is_refused_by_the_witness(
    engine: Engine, other_engine: Engine, signer: HSMTreeHeadSigner, witness: WitnessProcess
) -> None:
    publisher = _publisher(engine, signer, witness)
    _append(engine, 8)
    _sequence(engine, signer)
    publisher.publish_once()
    _append(engine, 4, "lost")
    _sequence(engine, signer)
    assert publisher.publish_once() == {witness.key.name: "cosigned 12"}
    # A point-in-time restore to size 8 (heads and cosignatures as they were), then
    # new writes on top.
    _replay(engine, other_engine, upto=8)
    _sequence(other_engine, signer)
    _copy_cosignatures(engine, other_engine, upto_size=8)
    _append(other_engine, 3, "after-restore")
    _sequence(other_engine, signer)
    restored = AuditStore(other_engine)
    restored.verify(signer.public_key_pem())  # the operator's key alone: no complaint
    outcome = _publisher(other_engine, signer, witness).publish_once()[witness.key.name]
    assert "has cosigned size 12, beyond this log's 11: the log was rolled back" in outcome
    with pytest.raises(AuditVerificationFailed, match="newest tree head 11 is not witnessed"):
        verify_witnessed(other_engine, restored.heads(), _keys(witness), 1)
    # Once the restored log is longer than what the witness saw, the proof fails (422).
    _append(other_engine, 3, "even-later")
    _sequence(other_engine, signer)
    outcome = _publisher(other_engine, signer, witness).publish_once()[witness.key.name]
    assert "inconsistent with the size 12 it cosigned" in outcome


def _stopped_output(witness: WitnessProcess) -> str:
    witness.stop()
    return witness.logged()


def _refusals(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as connection:
        payloads = connection.execute(
            select(audit_entries.c.payload).order_by(audit_entries.c.id)
        ).scalars()
        entries = [json.loads(p) for p in payloads]
    return [e["details"] for e in entries if e["action"] == REFUSED]


def test_failures_are_counted_by_reason_and_the_lag_measured(
    engine: Engine, signer: HSMTreeHeadSigner, witness: WitnessProcess
) -> None:
    publisher = _publisher(engine, signer, witness)
    name = witness.key.name
    _append(engine, 4)
    _sequence(engine, signer)
    publisher.publish_once()
    current = witness_lag(engine, _keys(witness), 1)
    assert current.witnesses == {name: Lag(0, 0.0)}
    assert current.quorum == Lag(0, 0.0)
    witness.stop()
    _append(engine, 3, "unwitnessed")
    _sequence(engine, signer)
    publisher.publish_once()
    publisher.publish_once()
    assert publisher.failures == {(name, UNREACHABLE): 2}
    assert not _refusals(engine)  # an outage is not a refusal: logged and counted only
    head = AuditStore(engine).latest_head()
    assert head is not None
    # The head of size 7 has waited 42 s for its cosignature (the clock is the test's).
    lag = witness_lag(engine, _keys(witness), 1, clock=lambda: head.timestamp_ms / 1000 + 42)
    assert lag.witnesses == {name: Lag(3, 42.0)}
    assert lag.quorum == Lag(3, 42.0)
    # A quorum of two with one witness is never reached: the whole log is unwitnessed.
    assert witness_lag(engine, _keys(witness), 2, clock=lambda: 0.0).quorum.entries == 7


def test_a_refusal_is_audited_once_per_run_and_counted(
    engine: Engine, other_engine: Engine, signer: HSMTreeHeadSigner, witness: WitnessProcess
) -> None:
    _append(engine, 6)
    _sequence(engine, signer)
    _publisher(engine, signer, witness).publish_once()
    _replay(engine, other_engine, upto=4)  # a restore to size 4, then new writes
    _append(other_engine, 4, "after-restore")
    _sequence(other_engine, signer)
    publisher = _publisher(other_engine, signer, witness)
    name = witness.key.name
    for _ in range(3):
        _sequence(other_engine, signer)  # each refusal entry makes a new head
        assert "inconsistent with the size 6" in publisher.publish_once()[name]
    assert publisher.failures == {(name, REFUSED_REASON): 3}
    [refusal] = _refusals(other_engine)  # one entry for the run, not one per retry
    assert refusal["witness"] == name
    assert refusal["reason"] == REFUSED_REASON
    assert refusal["tree_size"] == 8
    assert "rewritten or forked" in str(refusal["error"])


def test_an_answer_without_a_valid_cosignature_is_counted_and_audited(
    engine: Engine, signer: HSMTreeHeadSigner, witness: WitnessProcess
) -> None:
    """The witness answers 200, but with a cosignature by a key other than the one the
    vault pinned for it (same name): no cosignature is stored."""
    impostor = CosignerKey.generate(witness.key.name).verifier_key()
    publisher = _publisher(engine, signer, witness)
    publisher.witnesses = [PinnedWitness(witness.url, VerifierKey.parse(impostor.encode()))]
    _append(engine, 2)
    _sequence(engine, signer)
    assert "without a valid cosignature" in publisher.publish_once()[witness.key.name]
    assert publisher.failures == {(witness.key.name, INVALID_COSIGNATURE): 1}
    [refusal] = _refusals(engine)
    assert refusal["reason"] == INVALID_COSIGNATURE
