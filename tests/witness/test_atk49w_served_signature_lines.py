"""atk49w: the witness served, as its latest checkpoint, every signature line the last
submitter sent, including lines it never verified.

Anyone reaching the witness's port can take the note the witness serves (GET
/<sha256(origin)>/checkpoint) and submit it again at the same size (old size = its size,
empty proof: consistent), adding a line under the log's name with the key ID of a key
the witness does not trust now: after the vault's audit key rotation (K1 -> K2), K1's.
`verify_note` with the witness's keys ([K2]) ignores the line, so the checkpoint is
cosigned and the note stored, with the line, is what the witness serves from then on.

The vault's `cofre audit verify` asks each pinned witness for that note and checks it
with every key of the log's chain (`audit.witnessed.check_witness_view`: K1 and K2):
the line under K1's ID does not verify, and signed-note rejects the whole note, so the
vault reports `witness ...: its latest checkpoint does not verify`, an integrity
failure caused by an unauthenticated client, until the vault publishes a newer head
(and again after each one, as often as the attacker likes). A Go signed-note monitor
given the witness's key is broken the same way by a bad line under the witness's name.

The witness must serve only the signatures it verified (the log's) and its own."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path

import pytest

from audit.errors import AuditVerificationFailed
from audit.note import (
    Checkpoint,
    NoteSignature,
    add_checkpoint_body,
    parse_note,
    verify_note,
)
from audit.witnessed import check_witness_view
from cofre_evidence_verifier.merkle import leaf_hash
from tests.support.evidence_bundles import (
    ORIGIN,
    AuditKey,
    consistency,
    day_log,
    handover,
    mth,
    witness,
)
from witness.core import Witness
from witness.state import WitnessState


@pytest.fixture
def state(tmp_path: Path) -> Iterator[WitnessState]:
    opened = WitnessState(tmp_path / "state.db")
    yield opened
    opened.close()


class _Log:
    """The part of `AuditStore` that `check_witness_view` reads, for a genuine log."""

    def __init__(self, log: list[str]) -> None:
        self.leaves = [leaf_hash(p.encode()) for p in log]

    def size(self) -> int:
        return len(self.leaves)

    def root_at(self, size: int) -> bytes:
        return mth(self.leaves[:size])


def _junk(name: str, key_id: int) -> str:
    return NoteSignature(name, key_id, b"\x00" * 70).line()


def _rotated_and_cosigned(state: WitnessState) -> tuple[Witness, AuditKey, AuditKey, list[str]]:
    """A witness that followed the genuine handover K1 -> K2 at size 5, then cosigned
    the vault's K2 checkpoint at size 10: the state after any audit key rotation."""
    k1, k2, log = AuditKey(), AuditKey(), day_log(20)
    leaves = [leaf_hash(p.encode()) for p in log]
    live = Witness(witness(), {ORIGIN: [k1.vkey()]}, state)
    state.pin_key(ORIGIN, k2.vkey().encode())
    live.add_checkpoint(add_checkpoint_body(0, [], handover(k1, k2, log, 5)))
    text = Checkpoint(ORIGIN, 10, mth(leaves[:10])).text()
    note = text + "\n" + NoteSignature(ORIGIN, k2.vkey().key_id, k2.sign(text.encode())).line()
    live.add_checkpoint(add_checkpoint_body(5, consistency(leaves[:10], 5), note))
    return live, k1, k2, log[:10]


def _served(live: Witness) -> str:
    note = live.latest_note(sha256(ORIGIN.encode()).hexdigest())
    assert note is not None
    return note


def test_a_resubmission_cannot_add_unverified_lines_to_the_served_note(
    state: WitnessState,
) -> None:
    live, k1, k2, log = _rotated_and_cosigned(state)
    chain = [k1.vkey(), k2.vkey()]
    w1 = live.key.verifier_key()
    # The vault's own check passes on what the witness serves.
    check_witness_view(_Log(log), _served(live), w1, chain)  # type: ignore[arg-type]

    # The attacker: GET the served note, append a junk line under the log's name with
    # the retired key's ID, submit it again at its own size.
    text, signatures = parse_note(_served(live))
    log_lines = "".join(s.line() for s in signatures if s.name == ORIGIN)
    forged = text + "\n" + log_lines + _junk(ORIGIN, k1.vkey().key_id)
    live.add_checkpoint(add_checkpoint_body(10, [], forged))  # accepted: consistent

    served = _served(live)
    text, signatures = parse_note(served)
    # Only lines the witness verified: the log's (by a key it trusts now) and its own.
    verify_note(text, signatures, chain)  # raised: K1's line does not verify
    try:
        check_witness_view(_Log(log), served, w1, chain)  # type: ignore[arg-type]
    except AuditVerificationFailed as exc:
        pytest.fail(f"an unauthenticated resubmission broke `cofre audit verify`: {exc}")


def test_a_resubmission_cannot_add_a_bogus_line_under_the_witness_name(
    state: WitnessState,
) -> None:
    """signed-note (and Go's note.Open) rejects a note when a known key's signature does
    not verify: a monitor holding the witness's key could not read its checkpoint."""
    live, _k1, k2, _log = _rotated_and_cosigned(state)
    w1 = live.key.verifier_key()
    text, signatures = parse_note(_served(live))
    log_lines = "".join(s.line() for s in signatures if s.name == ORIGIN)
    forged = text + "\n" + log_lines + _junk(w1.name, w1.key_id)
    live.add_checkpoint(add_checkpoint_body(10, [], forged))
    text, signatures = parse_note(_served(live))
    verify_note(text, signatures, [k2.vkey(), w1])  # raised: the bogus witness line


def test_the_served_note_keeps_the_log_signature_and_the_cosignature(
    state: WitnessState,
) -> None:
    live, _k1, k2, _log = _rotated_and_cosigned(state)
    text, signatures = parse_note(_served(live))
    assert [s.name for s in signatures] == [ORIGIN, live.key.name]
    verify_note(text, signatures, [k2.vkey(), live.key.verifier_key()])
    blob = base64.b64decode(signatures[1].line().split(" ")[2])
    assert struct.unpack(">I", blob[:4])[0] == live.key.verifier_key().key_id
