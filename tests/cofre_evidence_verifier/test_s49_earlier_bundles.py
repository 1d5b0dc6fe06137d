"""Session 49: check 6c reaches back past the previous bundle (`--earlier`).

A signed proposal counts for its whole life (up to 168 h), and nothing ties a bundle's
period to it. rev48 showed the attack: the officers' genuine start of Alice's proposal
two bundles back, and the operator's copy of it under another id started on Bob's
approval alone, VERIFIED with `--previous` (the one bundle before). Now:

- a ceremony whose verified proposal was signed before the oldest bundle at hand fails
  as not proven (`earlier.lookback_problems`), naming how far back to go;
- the bundles before the previous one, which the auditor verified as each came, are
  given with `--earlier` (newest first), each linked to the bundle after it
  (`earlier.check_earlier`), and check 6c looks for an earlier start of each signed
  proposal in all of them (`dual_control_log.started_before`);
- so a genuine ceremony proposed two bundles back verifies with them, and the copy
  fails, naming the genuine start in the earlier bundle.

Three bundles of one day: 00:00-07:00 (entries 0-7), 07:00-10:30 (8-10), 10:30-24:00
(11-19), chained as `tests.support.evidence_bundles.chained` chains two.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cofre_cli.main import app
from cofre_evidence_verifier.cli import main
from cofre_evidence_verifier.merkle import leaf_hash
from cofre_evidence_verifier.note import CosignerKey
from cofre_evidence_verifier.report import Report
from cofre_evidence_verifier.verify import verify_bundle
from tests.cofre_evidence_verifier.test_atk48a_proposal_variant import (
    ALICE,
    BOB,
    _log,
    _registration,
    _relabelled,
    _unix,
)
from tests.cofre_evidence_verifier.test_rev48b_cancel_across_bundles import _records
from tests.support.evidence_bundles import (
    ORIGIN,
    PERIOD,
    AuditKey,
    Bundle,
    b64,
    build,
    consistency,
    cutoff,
    day_log,
    payload,
    policy_payload,
    witness,
)
from tests.support.officers import (
    new_software_officer,
    officers_policy,
    signed_action,
    signed_proposal,
)
from vault.approval_proof import approval_path

T1, T2 = "2026-03-01T07:00:00.000000Z", "2026-03-01T10:30:00.000000Z"


def _three(
    log: list[str], key: AuditKey, w: CosignerKey, records: list[int] | None = None
) -> tuple[Bundle, Bundle, Bundle]:
    """The day's three chained bundles of `log` (20 entries) and its cutoff; the last
    one's ``keys/dual_control.json`` with the entries `records`, as the exporter writes
    the propose, approve and start entries of each ceremony started in the period."""
    full = [*log, cutoff()]
    first = build(full, 0, 8, size=9, key=key, witnesses=[w], period=(PERIOD[0], T1))
    middle = build(full, 8, 11, size=12, key=key, witnesses=[w], period=(T1, T2))
    last = build(full, 11, len(log), size=len(full), key=key, witnesses=[w], period=(T2, PERIOD[1]))
    leaves = [leaf_hash(p.encode()) for p in full]
    for older, newer in ((first, middle), (middle, last)):
        newer.manifest["previous_head"] = older.manifest["covering_head"]
        size1 = older.manifest["covering_head"]["tree_size"]
        size2 = newer.manifest["covering_head"]["tree_size"]
        proof = [b64(h) for h in consistency(leaves[:size2], size1)]
        newer.files["audit/consistency.json"] = json.dumps(
            {"size1": size1, "size2": size2, "proof": proof}
        ).encode()
    if records:
        last.files["keys/dual_control.json"] = _records(log, records)
    return first, middle, last


def _verify(
    tmp_path: Path,
    key: AuditKey,
    w: CosignerKey,
    bundles: tuple[Bundle, Bundle, Bundle],
    **kw: object,
) -> Report:
    paths = [b.write(tmp_path / f"{n}.tar.gz") for n, b in zip("abc", bundles, strict=True)]
    return verify_bundle(
        paths[2],
        key.pem,
        paths[1],
        witness_keys=[w.verifier_key()],
        authorities=["localhost"],
        origin=ORIGIN,
        **kw,  # type: ignore[arg-type]
    )


RECORDS = [4, 12, 14]  # the long ceremony's propose, approve and start


def _long_ceremony() -> tuple[list[str], str]:
    """Alice proposes a KEK rotation at 05:00 (entry 4, the first bundle); Bob approves
    it at 12:00 and it starts (entries 12-14, the third bundle), 7 h into its 24 h life:
    a genuine ceremony."""
    alice, bob = new_software_officer("officer-alice"), new_software_officer("officer-bob")
    log = day_log(20)
    log[0] = policy_payload(PERIOD[0], officers_policy([(ALICE, alice), (BOB, bob)]))
    at = "2026-03-01T05:00:00.000000Z"
    proposal = signed_proposal(alice, "kek", created=_unix(at))
    ceremony = proposal.ceremony_id()
    log[4] = payload(
        "key.rotation.propose",
        at,
        actor=ALICE,
        key_id=ceremony,
        details={"kind": "kek"},
        document=proposal.to_json(),
    )
    approved = "2026-03-01T12:00:00.000000Z"
    approval = signed_action(bob, approval_path(ceremony), created=_unix(approved))
    log[12] = payload(
        "key.rotation.approve",
        approved,
        actor=BOB,
        key_id=ceremony,
        details={"approvals": 1},
        document=approval.to_json(),
    )
    started = "2026-03-01T12:00:00.500000Z"
    log[13] = _registration(2, ceremony, proposal, approval, started)
    log[14] = payload(
        "key.rotation.start",
        started,
        actor=BOB,
        key_id=ceremony,
        details={"kind": "kek", "old_version": 1, "new_version": 2, "records": 0},
    )
    return log, ceremony


def test_a_genuine_ceremony_proposed_two_bundles_back_needs_the_earlier_bundle(
    tmp_path: Path,
) -> None:
    log, ceremony = _long_ceremony()
    key, w = AuditKey(), witness()
    bundles = _three(log, key, w, RECORDS)
    alone = _verify(tmp_path, key, w, bundles)
    assert not alone.ok
    assert [p for p in alone.problems if "before the oldest bundle at hand" in p] == [
        f"dual control: ceremony {ceremony} (started at entry 14): its proposal was signed "
        f"at 2026-03-01T05:00:00+00:00, before the oldest bundle at hand begins ({T1}): "
        "whether that signed proposal already started another rotation is not proven; "
        "verify with the bundles back to its signing (--previous, then --earlier, newest "
        "first)"
    ], alone.problems
    chained = _verify(tmp_path, key, w, bundles, earlier=[tmp_path / "a.tar.gz"])
    assert chained.ok, chained.problems
    assert "earlier" in chained.passed_checks
    proven = chained.summary["dual_control"]
    assert [(c["ceremony"], c["proposal_signed_at"]) for c in proven] == [
        (ceremony, "2026-03-01T05:00:00+00:00")
    ]


def test_the_copy_two_bundles_after_the_original_is_found_in_the_earlier_bundle(
    tmp_path: Path,
) -> None:
    log, ceremony, second = _log(_relabelled, (11, 11))
    key, w = AuditKey(), witness()
    report = _verify(tmp_path, key, w, _three(log, key, w), earlier=[tmp_path / "a.tar.gz"])
    assert not report.ok
    assert "earlier" in report.passed_checks
    assert [p for p in report.problems if "under another id" in p] == [
        f"dual control: ceremony {second} started at entry 14 runs the signed proposal that "
        f"started ceremony {ceremony} at entry 7 of an earlier bundle, under another id: "
        "one signed proposal starts one rotation (the vault refuses a second run of it)"
    ], report.problems
    assert not [p for p in report.problems if "before the oldest bundle" in p]


@pytest.mark.parametrize("wrong", ["itself", "the last", "unsigned"])
def test_an_earlier_bundle_that_is_not_the_one_before_fails(tmp_path: Path, wrong: str) -> None:
    """The previous bundle given again, the newest, or the first re-signed by another
    key: each fails as an earlier bundle, and the ceremony stays unproven."""
    log, _ceremony = _long_ceremony()
    key, w = AuditKey(), witness()
    first, middle, last = _three(log, key, w, RECORDS)
    if wrong == "unsigned":
        first.key = AuditKey()
    report = _verify(tmp_path, key, w, (first, middle, last), earlier=[tmp_path / "a.tar.gz"])
    if wrong != "unsigned":
        named = {"itself": "b", "the last": "c"}[wrong]
        report = _verify(
            tmp_path, key, w, (first, middle, last), earlier=[tmp_path / f"{named}.tar.gz"]
        )
    assert not report.ok
    assert "earlier" not in report.passed_checks
    assert [p for p in report.problems if p.startswith("earlier bundle 1 (")], report.problems
    assert [p for p in report.problems if "before the oldest bundle at hand" in p]


def test_both_commands_take_earlier_bundles_after_the_previous_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, _ceremony = _long_ceremony()
    key, w = AuditKey(), witness()
    bundles = _three(log, key, w, RECORDS)
    a, b, c = (x.write(tmp_path / f"{n}.tar.gz") for n, x in zip("abc", bundles, strict=True))
    (tmp_path / "audit.pem").write_bytes(key.pem)
    (tmp_path / "w.vkey").write_text(w.verifier_key().encode())
    pins = ["--public-key", str(tmp_path / "audit.pem"), "--witness-key", str(tmp_path / "w.vkey")]
    pins += ["--authority", "localhost"]
    assert main([str(c), *pins, "--previous", str(b)]) == 1
    assert main([str(c), *pins, "--previous", str(b), "--earlier", str(a)]) == 0
    assert main([str(c), *pins, "--origin", ORIGIN, "--earlier", str(a)]) == 2
    assert "--earlier without --previous" in capsys.readouterr().err
    runner = CliRunner()
    verify = ["evidence", "verify", str(c), *pins]
    result = runner.invoke(app, [*verify, "--previous", str(b), "--earlier", str(a)])
    assert result.exit_code == 0, (result.output, result.exception)
    result = runner.invoke(app, [*verify, "--origin", ORIGIN, "--earlier", str(a)])
    assert result.exit_code == 2, (result.output, result.exception)
