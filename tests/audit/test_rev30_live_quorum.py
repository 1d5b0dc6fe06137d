"""Review 30: `cofre audit verify` with a quorum that a kept-behind witness can meet.

The operator holds the HSM PIN and the database, and chooses which witnesses the
publisher reaches. They keep witness w2 behind (never submit to it), let w1 cosign the
genuine log, then rebuild the log without one entry, re-sign its heads and submit the
rewrite to w2 alone: w2 has cosigned nothing of this log, so it takes the rewrite. With
both witnesses pinned and a quorum of 1, `verify_witnessed` passed on the rewritten
store (the rows of w1's cosignatures are the operator's to drop). A quorum must be more
than half of the distinct witnesses pinned, as the offline verifier requires.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from audit.errors import AuditVerificationFailed
from audit.heads import log_origin, log_verifier_key
from audit.note import VerifierKey
from audit.publisher import CheckpointPublisher, PinnedWitness
from audit.store import AuditStore
from audit.witnessed import verify_witnessed
from tests.audit.test_witnessing import _append, _replay, _sequence
from tests.support.witness_process import WitnessProcess
from vault.signing import HSMTreeHeadSigner
from vault.storage.database import create_database_engine, migrate
from witness.client import submit_checkpoint


def _witness(path: Path, signer: HSMTreeHeadSigner) -> WitnessProcess:
    vkey = log_verifier_key(log_origin("cofre"), signer.public_key_pem()).encode()
    process = WitnessProcess(path, [vkey])
    process.start()
    return process


@pytest.fixture
def witnesses(tmp_path: Path, signer: HSMTreeHeadSigner) -> Iterator[list[WitnessProcess]]:
    pair = [_witness(tmp_path / "w1", signer), _witness(tmp_path / "w2", signer)]
    yield pair
    for process in pair:
        process.stop()


@pytest.fixture
def rewritten(tmp_path: Path) -> Iterator[Engine]:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'rewritten.sqlite3'}")
    migrate(engine)
    yield engine
    engine.dispose()


def _publish(engine: Engine, signer: HSMTreeHeadSigner, witness: WitnessProcess) -> None:
    def submit(pinned: PinnedWitness, body: bytes) -> tuple[int, str, str]:
        answer = submit_checkpoint(pinned.url, body)
        return answer.status, answer.content_type, answer.text

    pinned = PinnedWitness(witness.url, VerifierKey.parse(witness.vkey))
    CheckpointPublisher(engine, [pinned], signer.public_key_pem, submit).publish_once()


def test_a_rewrite_cosigned_by_a_kept_behind_witness_fails_live_verify(
    engine: Engine,
    rewritten: Engine,
    signer: HSMTreeHeadSigner,
    witnesses: list[WitnessProcess],
) -> None:
    """Before the fix: `verify_witnessed` passed on the rewritten store."""
    current, behind = witnesses
    _append(engine, 12)
    _sequence(engine, signer)
    _publish(engine, signer, current)  # w1 cosigns the genuine log; w2 is never reached
    _replay(engine, rewritten, skip=5)  # the operator's rebuild without entry 5
    _sequence(rewritten, signer)
    _publish(rewritten, signer, behind)  # w2 takes the rewrite: it extends nothing it saw
    pinned = [VerifierKey.parse(w.vkey) for w in witnesses]
    heads = AuditStore(rewritten).heads()
    with pytest.raises(AuditVerificationFailed, match="not more than half"):
        verify_witnessed(rewritten, heads, pinned, 1)
    # A majority (both) refuses the rewrite, naming the witness that kept the genuine log.
    with pytest.raises(AuditVerificationFailed, match="1 of the 2 witness cosignatures"):
        verify_witnessed(rewritten, heads, pinned, 2)
