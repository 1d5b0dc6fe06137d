"""The size a witness's 409 answer names (text/x.tlog.size) is a hint for the
publisher's one retry, never remembered: a forged or lying 409 must not stop
publishing, nor skip an audit key handover for good.

Before the fix, a 409 naming a size beyond the log's head was cached, and every later
`publish_once` refused from the cache ("beyond this log's ... rolled back") without
submitting again, until the vault restarted; and a 409 naming a size beyond a
handover's marked the handover as taken, so its cosignature was never asked for again.

The witness here is the real one (`witness.core.Witness`, in process) behind a
`submit` that can answer a 409 of its own instead, as a forger on the path would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert

from audit.handover import hold_sequencer_lock, record_handover, sign_handover
from audit.heads import head_note, log_origin, log_verifier_key
from audit.log import AuditEvent, AuditLog, Outcome
from audit.note import CosignerKey, add_checkpoint_body, parse_signature_lines
from audit.publisher import CheckpointPublisher, PinnedWitness, cosignatures_of
from audit.schema import audit_cosignatures, audit_handover_cosignatures
from audit.sequencer import Sequencer
from audit.store import AuditStore
from tests.support.signers import SoftSigner
from vault.storage.database import create_database_engine, migrate
from witness.core import Witness
from witness.errors import CheckpointConflict, WitnessError
from witness.state import WitnessState

ORIGIN = log_origin("cofre")


class LyingWitness:
    """A witness whose answers `lies` replaces, one each, with a 409 naming that size."""

    def __init__(self, directory: Path, log_key: SoftSigner) -> None:
        self.key = CosignerKey.generate("witness.test/w1")
        self.state = WitnessState(directory / "witness.sqlite3")
        vkey = log_verifier_key(ORIGIN, log_key.public_key_pem())
        self.witness = Witness(self.key, {ORIGIN: [vkey]}, self.state)
        self.pinned = PinnedWitness("https://witness.test", self.key.verifier_key())
        self.lies: list[int] = []
        self.bodies: list[bytes] = []

    def submit(self, pinned: PinnedWitness, body: bytes) -> tuple[int, str, str]:
        assert pinned == self.pinned
        self.bodies.append(body)
        if self.lies:
            return 409, "text/x.tlog.size", f"{self.lies.pop(0)}\n"
        try:
            return 200, "text/plain", self.witness.add_checkpoint(body)
        except CheckpointConflict as exc:
            return 409, "text/x.tlog.size", f"{exc.latest_size}\n"
        except WitnessError as exc:
            return exc.status, "text/plain", f"{exc}\n"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'cofre.sqlite3'}")
    migrate(engine)
    yield engine
    engine.dispose()


def _grow(engine: Engine, signer: SoftSigner, count: int, tag: str) -> int:
    """Append `count` entries, sign a head with `signer`; return the head's size."""
    with engine.begin() as connection:
        for i in range(count):
            AuditLog().append(
                connection,
                AuditEvent(action="tokenize", outcome=Outcome.SUCCESS, actor=f"{tag}-{i}"),
            )
    Sequencer(engine, signer).drain()
    head = AuditStore(engine).latest_head()
    assert head is not None
    return head.tree_size


def test_a_409_beyond_the_head_is_not_remembered(engine: Engine, tmp_path: Path) -> None:
    signer = SoftSigner("cofre-audit-v1")
    witness = LyingWitness(tmp_path, signer)
    publisher = CheckpointPublisher(engine, [witness.pinned], signer.public_key_pem, witness.submit)
    name = witness.pinned.name
    first = _grow(engine, signer, 5, "a")
    assert publisher.publish_once() == {name: f"cosigned {first}"}
    size = _grow(engine, signer, 3, "b")
    witness.lies = [1000]  # a forged 409: "I have cosigned size 1000"
    assert "beyond this log's" in publisher.publish_once()[name]
    # The next cycle submits again (before the fix: refused from the cache, unsent).
    submitted = len(witness.bodies)
    assert publisher.publish_once() == {name: f"cosigned {size}"}
    assert len(witness.bodies) > submitted
    assert publisher.publish_once() == {name: "current"}


def test_a_handover_a_409_claims_is_past_is_retried(engine: Engine, tmp_path: Path) -> None:
    old, new = SoftSigner("cofre-audit-v1"), SoftSigner("cofre-audit-v2")
    key = [old]

    def current_key() -> bytes:  # what the vault's signer answers: the key now
        return key[0].public_key_pem()

    witness = LyingWitness(tmp_path, old)
    witness.state.pin_key(ORIGIN, log_verifier_key(ORIGIN, new.public_key_pem()).encode())
    publisher = CheckpointPublisher(engine, [witness.pinned], current_key, witness.submit)
    name = witness.pinned.name
    handed_at = _grow(engine, old, 5, "a")
    assert publisher.publish_once() == {name: f"cosigned {handed_at}"}
    head = AuditStore(engine).latest_head()
    assert head is not None
    with engine.begin() as connection:
        hold_sequencer_lock(connection)
        record_handover(connection, handed_at, new.key_id, sign_handover(head, old, new))
    key[0] = new
    size = _grow(engine, new, 4, "b")
    # A forged 409 to the handover: "I have cosigned size 7", past the handover at 5.
    witness.lies = [7]
    assert "refused head" in publisher.publish_once()[name]  # the new key: not trusted yet
    assert cosignatures_of(engine, handed_at, audit_handover_cosignatures) == []
    # The next cycle submits the handover again (before the fix: skipped for good, and
    # every head of the new key refused), and keeps the witness's cosignature of it.
    assert publisher.publish_once() == {name: f"cosigned {size}"}
    assert len(cosignatures_of(engine, handed_at, audit_handover_cosignatures)) == 1


def test_a_handover_our_cosignatures_show_past_is_not_submitted(
    engine: Engine, tmp_path: Path
) -> None:
    """The genuine case, kept: the stored cosignatures show the witness cosigned a head
    past the handover (its cosignature of the handover was not kept, as by a vault
    before migration 0011): it followed it, so the handover is not submitted."""
    old, new = SoftSigner("cofre-audit-v1"), SoftSigner("cofre-audit-v2")
    witness = LyingWitness(tmp_path, old)
    witness.state.pin_key(ORIGIN, log_verifier_key(ORIGIN, new.public_key_pem()).encode())
    store = AuditStore(engine)
    handed_at = _grow(engine, old, 5, "a")
    head = store.latest_head()
    assert head is not None
    handover = sign_handover(head, old, new)
    with engine.begin() as connection:
        hold_sequencer_lock(connection)
        record_handover(connection, handed_at, new.key_id, handover)
    size = _grow(engine, new, 4, "b")
    # Submitted by hand, only the head's cosignature stored (none of the handover's).
    witness.submit(witness.pinned, add_checkpoint_body(0, [], handover))
    latest = store.latest_head()
    assert latest is not None
    proof = store.consistency_proof(handed_at, size)
    note = head_note(latest, new.public_key_pem())
    status, _, answer = witness.submit(witness.pinned, add_checkpoint_body(handed_at, proof, note))
    assert status == 200, answer
    [cosignature] = parse_signature_lines(answer)
    with engine.begin() as connection:
        connection.execute(
            insert(audit_cosignatures).values(
                tree_size=size,
                witness=witness.pinned.name,
                key_id=witness.pinned.key.key_id,
                timestamp=int.from_bytes(cosignature.signature[:8], "big"),
                signature=cosignature.signature[8:],
            )
        )
    publisher = CheckpointPublisher(engine, [witness.pinned], new.public_key_pem, witness.submit)
    submitted = len(witness.bodies)
    assert publisher.publish_once() == {witness.pinned.name: "current"}
    assert publisher.publish_once() == {witness.pinned.name: "current"}
    assert len(witness.bodies) == submitted
