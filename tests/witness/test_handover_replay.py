"""Review 36: the witness cosigns a checkpoint with a ``cofre-key-handover`` line only
when it is the handover it followed, submitted again, or a new handover from the key it
trusts now to a key the log never had and its operator pinned.

Before the fix, a handover whose NEW key the witness trusted was cosigned "like any
other checkpoint", without looking at the old key: the HSM PIN holder's handover from a
software key of their own to the current key, and the retired key's handover to the
current key moved to a later size, both got a cosignature, which a verifier reads as
the witness having followed that key chain (tests/cofre_evidence_verifier/
test_handover_replay.py shows the bundles this let through)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit.note import add_checkpoint_body
from cofre_evidence_verifier.merkle import leaf_hash
from tests.support.evidence_bundles import (
    ORIGIN,
    AuditKey,
    consistency,
    day_log,
    handover,
    witness,
)
from witness.core import Witness
from witness.errors import HandoverRefused
from witness.state import WitnessState


@pytest.fixture
def state(tmp_path: Path) -> Iterator[WitnessState]:
    opened = WitnessState(tmp_path / "state.db")
    yield opened
    opened.close()


def _rotated(state: WitnessState, k1: AuditKey, k2: AuditKey, log: list[str]) -> Witness:
    """A witness that trusted `k1` and followed the genuine handover to `k2` at size 5."""
    live = Witness(witness(), {ORIGIN: [k1.vkey()]}, state)
    state.pin_key(ORIGIN, k2.vkey().encode())
    live.add_checkpoint(add_checkpoint_body(0, [], handover(k1, k2, log, 5)))
    return live


def test_a_handover_from_an_unknown_key_to_the_trusted_key_is_refused(
    state: WitnessState, caplog: pytest.LogCaptureFixture
) -> None:
    real, rogue, log = AuditKey(), AuditKey(), day_log(20)
    live = Witness(witness(), {ORIGIN: [real.vkey()]}, state)
    with caplog.at_level(logging.ERROR, "cofre.witness"), pytest.raises(HandoverRefused):
        live.add_checkpoint(add_checkpoint_body(0, [], handover(rogue, real, log, 5)))
    assert "REFUSED KEY HANDOVER" in caplog.text
    assert live.counts["witness_handover_refused"] == 1
    assert state.handovers(ORIGIN) == []
    assert state.latest(ORIGIN) is None


def test_the_retired_keys_handover_moved_to_a_later_size_is_refused(
    state: WitnessState,
) -> None:
    k1, k2, log = AuditKey(), AuditKey(), day_log(20)
    leaves = [leaf_hash(p.encode()) for p in log]
    live = _rotated(state, k1, k2, log)
    moved = handover(k1, k2, log, 15)
    with pytest.raises(HandoverRefused):
        live.add_checkpoint(add_checkpoint_body(5, consistency(leaves[:15], 5), moved))
    assert len(state.handovers(ORIGIN)) == 1
    latest = state.latest(ORIGIN)
    assert latest is not None
    assert latest.size == 5


def test_the_followed_handover_submitted_again_is_cosigned(state: WitnessState) -> None:
    """A publisher that lost the first answer submits the same handover again (fresh
    ECDSA signatures): the same size, root and keys, so the same cosignature statement."""
    k1, k2, log = AuditKey(), AuditKey(), day_log(20)
    live = _rotated(state, k1, k2, log)
    line = live.add_checkpoint(add_checkpoint_body(5, [], handover(k1, k2, log, 5)))
    assert line.startswith("\u2014 ")
    assert len(state.handovers(ORIGIN)) == 1


def test_a_handover_back_to_a_key_the_log_had_is_refused(state: WitnessState) -> None:
    """Even with the old key pinned again by the operator, the log does not go back to
    a retired key: a handover to it would revive whatever signed with it since."""
    k1, k2, log = AuditKey(), AuditKey(), day_log(20)
    leaves = [leaf_hash(p.encode()) for p in log]
    live = _rotated(state, k1, k2, log)
    state.pin_key(ORIGIN, k1.vkey().encode())
    back = handover(k2, k1, log, 10)
    with pytest.raises(HandoverRefused, match="a key the log had already"):
        live.add_checkpoint(add_checkpoint_body(5, consistency(leaves[:10], 5), back))
    assert len(state.handovers(ORIGIN)) == 1


def test_a_second_handover_at_the_size_of_the_followed_one_is_refused(
    state: WitnessState,
) -> None:
    """A handover from the new key to a third pinned key at the same size (same root,
    so consistent) was followed, and its row replaced the first's (one row per size):
    the witness forgot the handover it had cosigned. The log hands its key over at most
    once per size."""
    k1, k2, k3, log = AuditKey(), AuditKey(), AuditKey(), day_log(20)
    live = _rotated(state, k1, k2, log)
    first = state.handovers(ORIGIN)
    state.pin_key(ORIGIN, k3.vkey().encode())
    with pytest.raises(HandoverRefused, match="already followed a handover at this size"):
        live.add_checkpoint(add_checkpoint_body(5, [], handover(k2, k3, log, 5)))
    assert state.handovers(ORIGIN) == first
