"""Review 36: a key chain the witnesses never followed is not VERIFIED.

Before the fix, the Cofre witness cosigned any handover whose NEW key it trusted, so
with witnesses required the verifier took:

- a handover from the HSM PIN holder's software key to the pinned, current key (the
  pinned new key "vouching" for the old one): heads signed by the software key verified;
- the retired key's handover to the current key moved past the genuine one, with the
  genuine handover left out of the bundle: heads forged by the retired key verified.

The witness now refuses both (tests/witness/test_handover_replay.py), so the bundles
carry no cosignature of those handovers and fail the witness check. The verifier also
refuses a chain that hands over to a key it had before."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from audit.note import add_checkpoint_body
from cofre_evidence_verifier.merkle import leaf_hash
from cofre_evidence_verifier.report import render_text
from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import (
    ORIGIN,
    AuditKey,
    build,
    consistency,
    day_log,
    handover,
    head_json,
    set_handovers,
    witness,
)
from witness.core import Witness
from witness.errors import WitnessError
from witness.state import WitnessState


@pytest.fixture
def state(tmp_path: Path) -> Iterator[WitnessState]:
    opened = WitnessState(tmp_path / "state.db")
    yield opened
    opened.close()


def _cosignature(live: Witness, body: bytes) -> str:
    """The witness's cosignature line for `body`, or "" when it refuses (the bundle then
    carries none, as the vault's publisher would)."""
    try:
        return live.add_checkpoint(body)
    except WitnessError:
        return ""


def test_a_bundle_whose_first_key_is_the_pin_holders_is_not_verified(
    tmp_path: Path, state: WitnessState
) -> None:
    real, rogue, log = AuditKey(), AuditKey(), day_log(20)
    w = witness()
    live = Witness(w, {ORIGIN: [real.vkey()]}, state)
    note = handover(rogue, real, log, 5)
    line = _cosignature(live, add_checkpoint_body(0, [], note))
    bundle = build(log, 3, 20, key=real, witnesses=[w])
    set_handovers(bundle, [note + line])
    heads = bundle.jsonl("audit/heads.jsonl")
    heads.insert(0, head_json(rogue, 2, b"\x42" * 32))  # a tree the software key made up
    bundle.set_jsonl("audit/heads.jsonl", heads)
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        real.pem,
        witness_keys=[w.verifier_key()],
        origin=ORIGIN,
    )
    assert not report.ok, report.verified_heads
    assert "the key handover at size 5 is not witnessed" in render_text(report)


def test_a_handover_moved_past_the_one_the_witness_followed_is_not_verified(
    tmp_path: Path, state: WitnessState
) -> None:
    k1, k2, log = AuditKey(), AuditKey(), day_log(20)
    leaves = [leaf_hash(p.encode()) for p in log]
    w = witness()
    live = Witness(w, {ORIGIN: [k1.vkey()]}, state)
    state.pin_key(ORIGIN, k2.vkey().encode())
    live.add_checkpoint(add_checkpoint_body(0, [], handover(k1, k2, log, 5)))
    moved = handover(k1, k2, log, 15)  # the retired K1 and the HSM's K2, at a later size
    line = _cosignature(live, add_checkpoint_body(5, consistency(leaves[:15], 5), moved))
    bundle = build(log, 3, 20, key=k2, witnesses=[w])
    set_handovers(bundle, [moved + line])
    heads = bundle.jsonl("audit/heads.jsonl")
    heads.insert(0, head_json(k1, 10, b"\x66" * 32))  # forged by the retired key
    bundle.set_jsonl("audit/heads.jsonl", heads)
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"), k1.pem, witness_keys=[w.verifier_key()], origin=ORIGIN
    )
    assert not report.ok, report.verified_heads
    assert "the key handover at size 15 is not witnessed" in render_text(report)
