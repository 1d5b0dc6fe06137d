"""The log's origin (c2sp.org/tlog-checkpoint, line 0 of every checkpoint) is checked
(review 29): a bundle holds checkpoints of one log, the auditor pins which one
(`--origin`; required by the commands since session 36, test_orig36_origin_required.py),
and a chain of bundles is of one log."""

from __future__ import annotations

from pathlib import Path

import pytest

from cofre_evidence_verifier.cli import main
from cofre_evidence_verifier.merkle import leaf_hash
from cofre_evidence_verifier.note import VerifierKey
from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import (
    ORIGIN,
    AuditKey,
    build,
    chained,
    day_log,
    handover,
    head_json,
    mth,
    set_handovers,
    witness,
)

STAGING = "cofre-audit/staging"


def test_a_checkpoint_of_another_log_cannot_stand_for_the_pinned_log(tmp_path: Path) -> None:
    """The witness also witnesses a second log of the same organisation (staging, a DR
    region); its checkpoints re-signed with the prod audit key pass for prod unless the
    auditor pins prod's origin, which since session 36 they must (or waive by name)."""
    w = witness()
    bundle = build(day_log(20), 3, 20, witnesses=[w], origin=STAGING)
    path = bundle.write(tmp_path / "b.tar.gz")
    keys = [w.verifier_key()]
    unpinned = verify_bundle(path, bundle.key.pem, witness_keys=keys)
    assert not unpinned.ok
    assert unpinned.missing_checks() == ["origin"]
    assert any(p.startswith("no origin pinned") and STAGING in p for p in unpinned.problems)
    waived = verify_bundle(path, bundle.key.pem, witness_keys=keys, unsafe_any_origin=True)
    assert waived.ok, waived.problems
    assert waived.verdict == "VERIFIED, UNSAFE: the log's origin was not pinned"
    assert any(f"of log {STAGING}" in c for c in waived.checks), waived.checks
    report = verify_bundle(path, bundle.key.pem, witness_keys=keys, origin=ORIGIN)
    assert not report.ok
    assert any(STAGING in p and ORIGIN in p for p in report.problems), report.problems
    assert verify_bundle(path, bundle.key.pem, witness_keys=keys, origin=STAGING).ok


def test_heads_of_one_bundle_share_one_origin(tmp_path: Path) -> None:
    w = witness()
    log = day_log(20)
    bundle = build(log, 3, 20, witnesses=[w])
    root10 = mth([leaf_hash(p.encode()) for p in log[:10]])
    other = head_json(bundle.key, 10, root10, origin="some-other-log")
    bundle.set_jsonl("audit/heads.jsonl", [other, *bundle.jsonl("audit/heads.jsonl")])
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        bundle.key.pem,
        witness_keys=[w.verifier_key()],
        origin=ORIGIN,
    )
    assert not report.ok
    assert any("some-other-log" in p for p in report.problems), report.problems


def _rotated(tmp_path: Path, handover_origin: str) -> tuple[Path, AuditKey, VerifierKey]:
    """A bundle whose heads after size 5 are signed by a new key, with the handover
    from the old key at size 5 made under `handover_origin` (which the witness took)."""
    w = witness()
    log = day_log(20)
    old, new = AuditKey(), AuditKey()
    note = handover(old, new, log, 5, cosigners=[w], origin=handover_origin)
    bundle = build(log, 3, 20, key=new, witnesses=[w])
    set_handovers(bundle, [note])
    return bundle.write(tmp_path / "b.tar.gz"), old, w.verifier_key()


def test_a_key_handover_of_the_same_log_is_followed(tmp_path: Path) -> None:
    path, old, w = _rotated(tmp_path, ORIGIN)
    report = verify_bundle(path, old.pem, witness_keys=[w], origin=ORIGIN)
    assert report.ok, report.problems


def test_a_key_handover_of_another_log_fails(tmp_path: Path) -> None:
    path, old, w = _rotated(tmp_path, STAGING)
    report = verify_bundle(path, old.pem, witness_keys=[w], origin=ORIGIN)
    assert not report.ok
    assert any("handover" in p and STAGING in p for p in report.problems), report.problems


def test_a_chain_of_bundles_is_of_one_log(tmp_path: Path) -> None:
    w, key = witness(), AuditKey()
    keys = [w.verifier_key()]
    for origins, ok in (((ORIGIN, ORIGIN), True), ((STAGING, ORIGIN), False)):
        first, second = chained(day_log(20), 10, key=key, witnesses=[w], origins=origins)
        report = verify_bundle(
            second.write(tmp_path / "b.tar.gz"),
            key.pem,
            first.write(tmp_path / "a.tar.gz"),
            witness_keys=keys,
        )
        assert report.ok is ok, report.problems
    assert any("previous bundle" in p and STAGING in p for p in report.problems)


@pytest.mark.parametrize(
    ("origin", "status"), [(ORIGIN, 0), (STAGING, 1), ("", 2), ("a\x1bb", 2), (" x", 2)]
)
def test_the_origin_option(tmp_path: Path, origin: str, status: int) -> None:
    w = witness()
    bundle = build(day_log(20), 3, 20, witnesses=[w])
    (tmp_path / "w.vkey").write_text(w.verifier_key().encode())
    (tmp_path / "audit.pem").write_bytes(bundle.key.pem)
    argv = [
        str(bundle.write(tmp_path / "b.tar.gz")),
        "--public-key",
        str(tmp_path / "audit.pem"),
        "--witness-key",
        str(tmp_path / "w.vkey"),
        "--origin",
        origin,
    ]
    assert main(argv) == status


def test_an_unwitnessed_run_is_never_the_plain_verdict(tmp_path: Path) -> None:
    """`--unsafe-no-witness` was a check line under a plain VERIFIED: a script reading
    the verdict line (or `--json`'s `unsafe`) took the vault's own key for a witnessed
    log. Since session 36 the verdict names it, as it names an unpinned origin."""
    bundle = build(day_log(20), 3, 20, witnesses=[witness()])
    path = bundle.write(tmp_path / "b.tar.gz")
    alone = verify_bundle(path, bundle.key.pem, origin=ORIGIN, unsafe_no_witnesses=True)
    assert alone.ok, alone.problems
    assert alone.unsafe == ["witnesses"]
    assert alone.verdict == "VERIFIED, UNSAFE: no witness cosignature was checked"
    both = verify_bundle(path, bundle.key.pem, unsafe_no_witnesses=True, unsafe_any_origin=True)
    assert both.verdict == (
        "VERIFIED, UNSAFE: no witness cosignature was checked; the log's origin was not pinned"
    )
