"""Review 29 M3: an audit key handover counts only when the witnesses cosigned it.

A handover is signed by the old and the new audit key, but the old key lives on the
vault's HSM behind the same PIN as everything else, so a PIN holder can sign a handover
to a software key of their own and then sign heads and manifests with that key, off the
HSM. Every signature in such a bundle is valid, and a witness's cosignature/v1 signs a
checkpoint's text, not the log's signature, so the covering head's cosignature still
verifies on the text re-signed with the rogue key. What the PIN holder cannot get is a
witness's cosignature of the handover itself: a witness follows a handover only to a key
its own operator pinned. So when witness keys are required, every handover in the chain
must carry a quorum of cosignatures by them, over the handover checkpoint (its
``cofre-key-handover`` line included)."""

from __future__ import annotations

from pathlib import Path

from cofre_evidence_verifier.cli import main
from cofre_evidence_verifier.merkle import leaf_hash
from cofre_evidence_verifier.note import Checkpoint, CosignerKey
from cofre_evidence_verifier.report import Report
from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import (
    ORIGIN,
    AuditKey,
    build,
    day_log,
    handover,
    mth,
    set_handovers,
    witness,
)

AT = 5  # the handover's tree size


def _verify_rotated(
    tmp_path: Path,
    note_for: tuple[AuditKey, AuditKey, list[str]],
    handover_note: str,
    witnesses: list[CosignerKey],
    quorum: int = 1,
) -> Report:
    """Verify, pinned to the old key and `witnesses`, a bundle signed (manifest, heads)
    by the new key whose covering head's checkpoint text every witness cosigned (as it
    cosigned the genuine log's) and whose key chain is `handover_note`."""
    old, new, log = note_for
    bundle = build(log, 3, 20, key=new, witnesses=witnesses)
    set_handovers(bundle, [handover_note])
    return verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        old.pem,
        witness_keys=[w.verifier_key() for w in witnesses],
        quorum=quorum,
        origin=ORIGIN,
    )


def test_a_handover_no_witness_cosigned_is_not_verified(tmp_path: Path) -> None:
    """The attack: the HSM PIN holder hands the log over to a software key of their own
    (both signatures valid) and signs everything after with it. Before the fix the
    verifier said VERIFIED with a witness key and a quorum required."""
    w = witness()
    real, rogue, log = AuditKey(), AuditKey(), day_log(20)
    note = handover(real, rogue, log, AT)  # the witnesses refused it: no cosignature
    report = _verify_rotated(tmp_path, (real, rogue, log), note, [w])
    assert not report.ok
    wanted = f"audit/handovers.jsonl: the key handover at size {AT} is not witnessed"
    assert any(wanted in p for p in report.problems), report.problems
    assert any("witness.example/w1 has no cosignature" in p for p in report.problems)


def test_a_handover_the_witnesses_cosigned_is_followed(tmp_path: Path) -> None:
    w = witness()
    old, new, log = AuditKey(), AuditKey(), day_log(20)
    note = handover(old, new, log, AT, cosigners=[w])
    report = _verify_rotated(tmp_path, (old, new, log), note, [w])
    assert report.ok, report.problems
    wanted = f"key handover at size {AT} cosigned by 1 of the 1 pinned witnesses required"
    assert any(wanted in c for c in report.checks), report.checks


def test_a_cosignature_of_the_plain_checkpoint_does_not_count(tmp_path: Path) -> None:
    """A witness's cosignature of the head at the handover's size (which it gave the
    genuine log) signs the checkpoint without the handover line: copied onto a
    handover it does not verify, so it cannot vouch for a key the witness never took."""
    w = witness()
    real, rogue, log = AuditKey(), AuditKey(), day_log(20)
    plain = Checkpoint(
        "cofre-audit/cofre", AT, mth([leaf_hash(p.encode()) for p in log[:AT]])
    ).text()
    note = handover(real, rogue, log, AT) + w.cosign(plain, 1_772_300_000).line()
    report = _verify_rotated(tmp_path, (real, rogue, log), note, [w])
    assert not report.ok
    assert any("cosignature does not verify" in p for p in report.problems), report.problems


def test_each_handover_needs_the_quorum(tmp_path: Path) -> None:
    """Two witnesses required: one that took the handover is not enough."""
    w1, w2 = witness("witness.example/w1"), witness("witness.example/w2")
    old, new, log = AuditKey(), AuditKey(), day_log(20)
    note = handover(old, new, log, AT, cosigners=[w1])
    report = _verify_rotated(tmp_path, (old, new, log), note, [w1, w2], quorum=2)
    assert not report.ok
    assert any(
        f"handover at size {AT} is not witnessed: 1 of the 2" in p
        and "witness.example/w2 has no cosignature" in p
        for p in report.problems
    ), report.problems


def test_the_command_line_fails_on_an_unwitnessed_handover(tmp_path: Path) -> None:
    w = witness()
    real, rogue, log = AuditKey(), AuditKey(), day_log(20)
    bundle = build(log, 3, 20, key=rogue, witnesses=[w])
    set_handovers(bundle, [handover(real, rogue, log, AT)])
    (tmp_path / "w.vkey").write_text(w.verifier_key().encode())
    (tmp_path / "audit.pem").write_bytes(real.pem)
    argv = [
        str(bundle.write(tmp_path / "b.tar.gz")),
        "--public-key",
        str(tmp_path / "audit.pem"),
        "--witness-key",
        str(tmp_path / "w.vkey"),
        "--origin",
        ORIGIN,
    ]
    assert main(argv) == 1
