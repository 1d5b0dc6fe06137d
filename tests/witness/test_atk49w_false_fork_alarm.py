"""atk49w: anyone reaching the witness made it log ``FORK OR ROLLBACK`` (at ERROR, "page
someone, the vault's log was rewritten or restored", docs/operations.md) for a log that
was neither.

The note the witness serves (GET /<sha256(origin)>/checkpoint) is the log's checkpoint
it last cosigned, signed by the log. Submitted again at its own size with one junk
"proof" line, it is refused (equal sizes need an empty proof), but as a fork: the witness
itself holds that very size and root, so it knows the log did not fork. No key, no
secret, one request: false pages at will, and a real fork alarm lost among them.

A refusal at the same size and root is a malformed request, not evidence against the
log; a different root at the same size still is (and is still alarmed)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path

import pytest

from audit.note import Checkpoint, NoteSignature, add_checkpoint_body
from cofre_evidence_verifier.merkle import leaf_hash
from tests.support.evidence_bundles import ORIGIN, AuditKey, day_log, mth, witness
from witness.core import Witness
from witness.errors import InconsistentCheckpoint
from witness.state import WitnessState


@pytest.fixture
def state(tmp_path: Path) -> Iterator[WitnessState]:
    opened = WitnessState(tmp_path / "state.db")
    yield opened
    opened.close()


def _signed(key: AuditKey, size: int, root: bytes) -> str:
    text = Checkpoint(ORIGIN, size, root).text()
    return text + "\n" + NoteSignature(ORIGIN, key.vkey().key_id, key.sign(text.encode())).line()


def test_the_served_checkpoint_with_a_junk_proof_is_no_fork(
    state: WitnessState, caplog: pytest.LogCaptureFixture
) -> None:
    key, log = AuditKey(), day_log(10)
    root = mth([leaf_hash(p.encode()) for p in log])
    live = Witness(witness(), {ORIGIN: [key.vkey()]}, state)
    live.add_checkpoint(add_checkpoint_body(0, [], _signed(key, 10, root)))
    served = live.latest_note(sha256(ORIGIN.encode()).hexdigest())
    assert served is not None

    with caplog.at_level(logging.WARNING, "cofre.witness"), pytest.raises(InconsistentCheckpoint):
        live.add_checkpoint(add_checkpoint_body(10, [b"\x00" * 32], served))
    assert "FORK OR ROLLBACK" not in caplog.text
    latest = state.latest(ORIGIN)
    assert latest is not None
    assert (latest.size, latest.root) == (10, root)


def test_another_root_at_the_same_size_is_still_a_fork(
    state: WitnessState, caplog: pytest.LogCaptureFixture
) -> None:
    key, log = AuditKey(), day_log(10)
    root = mth([leaf_hash(p.encode()) for p in log])
    live = Witness(witness(), {ORIGIN: [key.vkey()]}, state)
    live.add_checkpoint(add_checkpoint_body(0, [], _signed(key, 10, root)))
    with caplog.at_level(logging.ERROR, "cofre.witness"), pytest.raises(InconsistentCheckpoint):
        live.add_checkpoint(add_checkpoint_body(10, [], _signed(key, 10, b"\x01" * 32)))
    assert "FORK OR ROLLBACK" in caplog.text
