"""`cofre dev` pins its local witness to each audit key a stored handover introduces
(one person plays every part in dev, the witness operator's too)."""

from __future__ import annotations

from pathlib import Path

from audit.handover import hold_sequencer_lock, record_handover, sign_handover
from audit.heads import log_origin, log_verifier_key
from audit.log import AuditEvent, AuditLog, Outcome
from audit.sequencer import Sequencer
from audit.store import AuditStore
from cofre_cli.devwitness import pin_dev_handovers
from tests.support.signers import SoftSigner
from vault.storage.database import create_database_engine, migrate
from witness.state import WitnessState


def test_cofre_dev_pins_the_keys_its_handovers_introduce(tmp_path: Path) -> None:
    """Dev plays the witness operator too: `cofre dev` pins (in the dev witness's state)
    the new key of each stored handover signed by both keys, and nothing else."""
    old, new = SoftSigner("cofre-audit-v1"), SoftSigner("cofre-audit-v2")
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
