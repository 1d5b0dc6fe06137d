"""A witness (its own process) pinned to the vault's old audit key follows a key
handover published by the vault's publisher once its operator pinned the new key
(until then the publisher reports the refusal, reason ``refused``), then cosigns the
heads the new key signs;
`cofre audit verify`'s checks (the stored log against the pinned old key, the
witnesses' cosignatures) pass across the rotation.

The two audit keys here are software ECDSA P-256 keys behind the same signer interface
as the HSM's (so the session's token keeps its keys); tests/vault/test_audit_rotation.py
runs the ceremony with the HSM."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from audit.errors import AuditVerificationFailed
from audit.handover import hold_sequencer_lock, record_handover, sign_handover
from audit.heads import log_origin, log_verifier_key
from audit.log import AuditEvent, AuditLog, Outcome
from audit.note import VerifierKey, parse_note, require_quorum
from audit.publisher import (
    CheckpointPublisher,
    PinnedWitness,
    cosignatures_of,
    witnessed_handover_notes,
)
from audit.schema import audit_handover_cosignatures
from audit.sequencer import Sequencer
from audit.store import AuditStore
from audit.witnessed import verify_witnessed
from tests.support.signers import SoftSigner
from tests.support.witness_process import WitnessProcess
from witness.client import submit_checkpoint

OLD, NEW = SoftSigner("cofre-audit-v1"), SoftSigner("cofre-audit-v2")


@pytest.fixture
def witness(tmp_path: Path) -> Iterator[WitnessProcess]:
    vkey = log_verifier_key(log_origin("cofre"), OLD.public_key_pem()).encode()
    process = WitnessProcess(tmp_path / "witness", [vkey])
    process.start()
    yield process
    process.stop()


def _append(engine: Engine, count: int, tag: str) -> None:
    with engine.begin() as connection:
        for i in range(count):
            AuditLog().append(
                connection,
                AuditEvent(action="tokenize", outcome=Outcome.SUCCESS, actor=f"{tag}-{i}"),
            )


def test_witness_follows_the_published_handover(engine: Engine, witness: WitnessProcess) -> None:
    current: list[SoftSigner] = [OLD]

    def submit(pinned: PinnedWitness, body: bytes) -> tuple[int, str, str]:
        answer = submit_checkpoint(pinned.url, body)
        return answer.status, answer.content_type, answer.text

    def current_key() -> bytes:  # what the vault's signer answers: the key now
        return current[0].public_key_pem()

    pinned = VerifierKey.parse(witness.vkey)
    publisher = CheckpointPublisher(
        engine, [PinnedWitness(witness.url, pinned)], current_key, submit
    )
    _append(engine, 5, "a")
    Sequencer(engine, OLD).drain()
    assert publisher.publish_once()[pinned.name].startswith("cosigned")
    store = AuditStore(engine)
    head = store.latest_head()
    assert head is not None
    with engine.begin() as connection:
        hold_sequencer_lock(connection)
        record_handover(connection, head.tree_size, NEW.key_id, sign_handover(head, OLD, NEW))
    current[0] = NEW
    _append(engine, 4, "b")
    Sequencer(engine, NEW).drain()
    # The witness's operator has not pinned the new key yet: the handover is refused,
    # reported as such, and retried on the next tick.
    refused = publisher.publish_once()[pinned.name]
    assert "refused the audit key handover" in refused
    assert "not pinned by the witness operator" in refused
    assert publisher.failures[(pinned.name, "refused")] == 1
    new_vkey = log_verifier_key(log_origin("cofre"), NEW.public_key_pem()).encode()
    witness.trust_key(new_vkey)  # given out of band by the vault's key custodians
    outcome = publisher.publish_once()[pinned.name]
    assert outcome.startswith("cosigned"), outcome
    latest = store.latest_head()
    assert latest is not None
    assert outcome == f"cosigned {latest.tree_size}"
    # The stored log verifies from the pinned old key, and every head is witnessed.
    assert store.verify(OLD.public_key_pem()).heads_checked == 2
    assert verify_witnessed(engine, store.heads(), [pinned], 1) == 2
    # A publisher started afresh (another node) submits the handover again: taken.
    again = CheckpointPublisher(
        engine, [PinnedWitness(witness.url, pinned)], NEW.public_key_pem, submit
    )
    assert again.publish_once()[pinned.name] == "current"


def test_the_witness_cosignature_of_the_handover_is_kept(
    engine: Engine, witness: WitnessProcess
) -> None:
    """Review 29 M3: the publisher stores the witness's cosignature of the handover
    checkpoint (not only of heads), which bundles carry; `cofre audit verify` requires
    the quorum on every handover, so one no witness took fails it by name."""

    def submit(pinned: PinnedWitness, body: bytes) -> tuple[int, str, str]:
        answer = submit_checkpoint(pinned.url, body)
        return answer.status, answer.content_type, answer.text

    pinned = VerifierKey.parse(witness.vkey)
    publisher = CheckpointPublisher(
        engine, [PinnedWitness(witness.url, pinned)], NEW.public_key_pem, submit
    )
    _append(engine, 3, "a")
    Sequencer(engine, OLD).drain()
    store = AuditStore(engine)
    head = store.latest_head()
    assert head is not None
    with engine.begin() as connection:
        hold_sequencer_lock(connection)
        record_handover(connection, head.tree_size, NEW.key_id, sign_handover(head, OLD, NEW))
    # Before the witness took it: the handover is unwitnessed, and the live check says so.
    with pytest.raises(AuditVerificationFailed, match=f"handover at size {head.tree_size} is not"):
        verify_witnessed(engine, store.heads(), [pinned], 1)
    witness.trust_key(log_verifier_key(log_origin("cofre"), NEW.public_key_pem()).encode())
    _append(engine, 2, "b")
    Sequencer(engine, NEW).drain()
    assert publisher.publish_once()[pinned.name].startswith("cosigned")
    (stored,) = cosignatures_of(engine, head.tree_size, audit_handover_cosignatures)
    (note,) = witnessed_handover_notes(engine, store.handover_notes())
    text, signatures = parse_note(note)
    assert stored in signatures
    assert "cofre-key-handover " in text
    require_quorum(text, signatures, [pinned], 1)
    # The witness cosigned the handover, then the new key's head (never the old head
    # at the handover's size, which it first saw as the handover).
    assert verify_witnessed(engine, store.heads(), [pinned], 1) == 1
