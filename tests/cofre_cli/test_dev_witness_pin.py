"""`cofre dev` pins its local witness to each audit key a stored handover introduces
(one person plays every part in dev, the witness operator's too)."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from audit.handover import hold_sequencer_lock, record_handover, sign_handover
from audit.heads import log_origin, log_verifier_key
from audit.log import AuditEvent, AuditLog, Outcome
from audit.sequencer import Sequencer
from audit.store import AuditStore
from cofre_cli.devwitness import pin_dev_handovers
from vault.storage.database import create_database_engine, migrate
from witness.state import WitnessState


class Signer:
    """A software audit key behind the signer interface (the session's token keeps its
    keys); tests/vault/test_audit_rotation.py runs the ceremony with the HSM."""

    def __init__(self, label: str) -> None:
        self.key_id = label
        self._private = ec.generate_private_key(ec.SECP256R1())

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message, ec.ECDSA(hashes.SHA256()))

    def public_key_pem(self) -> bytes:
        return self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def test_cofre_dev_pins_the_keys_its_handovers_introduce(tmp_path: Path) -> None:
    """Dev plays the witness operator too: `cofre dev` pins (in the dev witness's state)
    the new key of each stored handover signed by both keys, and nothing else."""
    old, new = Signer("cofre-audit-v1"), Signer("cofre-audit-v2")
    engine = create_database_engine(f"sqlite:///{tmp_path / 'cofre.sqlite3'}")
    try:
        migrate(engine)
        state_file = tmp_path / "witness" / "state.sqlite3"
        assert pin_dev_handovers(engine, state_file) == 0  # no rotation yet
        with engine.begin() as connection:
            AuditLog().append(
                connection, AuditEvent(action="tokenize", outcome=Outcome.SUCCESS, actor="a")
            )
        Sequencer(engine, old).drain()
        head = AuditStore(engine).latest_head()
        assert head is not None
        with engine.begin() as connection:
            hold_sequencer_lock(connection)
            record_handover(connection, head.tree_size, new.key_id, sign_handover(head, old, new))
        assert pin_dev_handovers(engine, state_file) == 1
        assert pin_dev_handovers(engine, state_file) == 0  # pinned already
    finally:
        engine.dispose()
    origin = log_origin("cofre")
    state = WitnessState(state_file)
    try:
        assert state.pinned_keys(origin) == [
            log_verifier_key(origin, new.public_key_pem()).encode()
        ]
    finally:
        state.close()
