"""The witness checks a checkpoint against the key handovers it followed (which key
signs now; whether a handover line is the one followed or a new one from the key
trusted now) and stores it in a later ``BEGIN IMMEDIATE`` transaction. Another
submission, or another witness process on the same state file, can take a handover in
between: the storing transaction re-reads the handovers and refuses the checkpoint
(`HandoverRaced`, 403, "submit it again") when they changed.

Before the fix both were stored: the retired key's checkpoint was cosigned after the
handover away from it, and two handovers from one key to two pinned keys were both
followed. Each test runs the other submission deterministically, through a state whose
`update` lets it in once, after the checks and before the storing transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from audit.note import Checkpoint, CosignerKey, NoteSignature, add_checkpoint_body
from cofre_evidence_verifier.merkle import leaf_hash
from tests.support.evidence_bundles import ORIGIN, AuditKey, consistency, day_log, handover, mth
from witness.core import Witness
from witness.errors import HandoverRaced, NoValidSignature
from witness.state import Cosigned, WitnessState

LOG = day_log(20)
LEAVES = [leaf_hash(p.encode()) for p in LOG]


class _Interleaved(WitnessState):
    """A state whose first `update` runs `meanwhile` before its transaction begins: the
    moment another submission can commit between a checkpoint's checks and its storing."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.meanwhile: Callable[[], object] | None = None

    def update(
        self, origin: str, decide: Callable[[Cosigned | None], Cosigned], **kwargs: Any
    ) -> Cosigned:
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            meanwhile()
        return super().update(origin, decide, **kwargs)


@pytest.fixture
def states(tmp_path: Path) -> Iterator[tuple[_Interleaved, WitnessState]]:
    """Two witness processes' states on one file: the checked one, and the other."""
    checked, other = _Interleaved(tmp_path / "state.db"), WitnessState(tmp_path / "state.db")
    yield checked, other
    checked.close()
    other.close()


def _signed(key: AuditKey, size: int) -> str:
    """The log's checkpoint of `size`, signed by `key` alone (a plain head)."""
    text = Checkpoint(ORIGIN, size, mth(LEAVES[:size])).text()
    vkey = key.vkey()
    return text + "\n" + NoteSignature(vkey.name, vkey.key_id, key.sign(text.encode())).line()


def _witnesses(states: tuple[_Interleaved, WitnessState], k1: AuditKey) -> tuple[Witness, Witness]:
    key = CosignerKey.generate("witness.example/w1")
    return (
        Witness(key, {ORIGIN: [k1.vkey()]}, states[0]),
        Witness(key, {ORIGIN: [k1.vkey()]}, states[1]),
    )


def test_a_checkpoint_of_the_key_a_racing_handover_retired_is_refused(
    states: tuple[_Interleaved, WitnessState],
) -> None:
    k1, k2 = AuditKey(), AuditKey()
    checked, other = states
    live, racer = _witnesses(states, k1)
    other.pin_key(ORIGIN, k2.vkey().encode())
    racer.add_checkpoint(add_checkpoint_body(0, [], _signed(k1, 5)))
    # k1's head of size 10 passes the checks (k1 is trusted); before it is stored, the
    # handover from k1 to k2 at size 5 is taken by the other process.
    checked.meanwhile = lambda: racer.add_checkpoint(
        add_checkpoint_body(5, [], handover(k1, k2, LOG, 5))
    )
    retired = add_checkpoint_body(5, consistency(LEAVES[:10], 5), _signed(k1, 10))
    with pytest.raises(HandoverRaced, match="submit it again") as raised:
        live.add_checkpoint(retired)
    assert raised.value.status == 403
    assert live.counts["witness_handover_raced"] == 1
    latest = checked.latest(ORIGIN)
    assert latest is not None
    assert latest.size == 5  # the handover, not k1's head after it
    # Submitted again, it is checked against the key trusted now: k1 signs nothing more.
    with pytest.raises(NoValidSignature, match="handed over at size 5"):
        live.add_checkpoint(retired)
    new = add_checkpoint_body(5, consistency(LEAVES[:10], 5), _signed(k2, 10))
    assert live.add_checkpoint(new).startswith("\u2014 ")


def test_two_racing_handovers_from_one_key_are_not_both_followed(
    states: tuple[_Interleaved, WitnessState],
) -> None:
    """The witness's operator pinned two keys; two handovers from the trusted key k1,
    one to each, pass the checks at the same time. Only the one stored first counts."""
    k1, k2, k3 = AuditKey(), AuditKey(), AuditKey()
    checked, other = states
    live, racer = _witnesses(states, k1)
    other.pin_key(ORIGIN, k2.vkey().encode())
    other.pin_key(ORIGIN, k3.vkey().encode())
    racer.add_checkpoint(add_checkpoint_body(0, [], _signed(k1, 5)))
    to_k2 = handover(k1, k2, LOG, 10)
    checked.meanwhile = lambda: racer.add_checkpoint(
        add_checkpoint_body(5, consistency(LEAVES[:10], 5), to_k2)
    )
    to_k3 = add_checkpoint_body(10, consistency(LEAVES[:12], 10), handover(k1, k3, LOG, 12))
    with pytest.raises(HandoverRaced):
        live.add_checkpoint(to_k3)
    assert checked.handovers(ORIGIN) == [to_k2]
    latest = checked.latest(ORIGIN)
    assert latest is not None
    assert latest.size == 10
    # Submitted again: signed by k1, which the witness no longer trusts, and by k3.
    with pytest.raises(NoValidSignature, match="handed over at size 10"):
        live.add_checkpoint(to_k3)


def test_the_same_handover_racing_itself_is_cosigned_when_submitted_again(
    states: tuple[_Interleaved, WitnessState],
) -> None:
    """Two publishers (or a retry) submit the genuine handover at once: the second is
    refused with "submit it again", and submitted again it is the handover followed."""
    k1, k2 = AuditKey(), AuditKey()
    checked, other = states
    live, racer = _witnesses(states, k1)
    other.pin_key(ORIGIN, k2.vkey().encode())
    racer.add_checkpoint(add_checkpoint_body(0, [], _signed(k1, 5)))
    checked.meanwhile = lambda: racer.add_checkpoint(
        add_checkpoint_body(5, [], handover(k1, k2, LOG, 5))
    )
    with pytest.raises(HandoverRaced):
        live.add_checkpoint(add_checkpoint_body(5, [], handover(k1, k2, LOG, 5)))
    again = live.add_checkpoint(add_checkpoint_body(5, [], handover(k1, k2, LOG, 5)))
    assert again.startswith("\u2014 ")
    assert len(checked.handovers(ORIGIN)) == 1
