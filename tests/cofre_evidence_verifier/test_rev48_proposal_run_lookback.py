"""rev48 (review of atk48a): one signed proposal, two rotations, past `--previous`.

atk48a's cross-bundle check (`dual_control_log.started_before`) looks for an earlier
start of the same signed proposal in the ONE previous bundle only (its entries, plus its
``keys/dual_control.json`` records, which carry only the previous period's own
ceremonies). But a proposal counts for its whole life: `proposal_ttl_hours` (24 h by
default, up to 168 h, read from the bundle's own ``config/settings.json``) plus the MFA
window. Nothing ties a bundle's period length to that life: the exporter picks the
periods (`cofre evidence export --from --to`; hourly or daily schedules are normal).
Whenever the officers' genuine start lies two or more bundles back, within the
proposal's life, the copy under another id (relabelled or negated signature) started on
Bob's approval alone verifies as dual-controlled, even chained with `--previous`.

Here: the officers' ceremony starts at 05:01 (bundle 1, 00:00-07:00), an ordinary
bundle 2 covers 07:00-10:30, and the operator's copy starts at 12:00 in bundle 3
(10:30-24:00), 7 h into Alice's 24 h proposal. Bundle 3 verified against bundle 2
reports the second KEK rotation as proposed by Alice and approved by Bob: VERIFIED.
The same with daily bundles and ``proposal_ttl_hours`` 72.

Fixed in session 49: a ceremony whose proposal was signed before the oldest bundle at
hand fails as not proven (`earlier.lookback_problems`), and the auditor gives the
bundles before the previous one with `--earlier`, newest first, which check 6c searches
too (tests/cofre_evidence_verifier/test_s49_earlier_bundles.py). Both tests were strict
xfails until then.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cofre_evidence_verifier.merkle import leaf_hash
from cofre_evidence_verifier.report import Report
from cofre_evidence_verifier.verify import verify_bundle
from tests.cofre_evidence_verifier import test_atk48a_proposal_variant as atk48a
from tests.cofre_evidence_verifier.test_atk48a_proposal_variant import (
    _checked_both,
    _log,
    _relabelled,
)
from tests.support.evidence_bundles import (
    ORIGIN,
    PERIOD,
    AuditKey,
    b64,
    build,
    consistency,
    cutoff,
    day_log,
    payload,
    witness,
)
from tests.support.officers import SigningOfficer, new_software_officer, signed_action
from vault.approval_proof import SignedAction, approval_path


def _not_proven(report: Report, ceremony: str) -> None:
    """The copy fails as a ceremony whose proposal predates the bundles at hand."""
    assert [
        p
        for p in report.problems
        if p.startswith(f"dual control: ceremony {ceremony} (started at entry ")
        and "before the oldest bundle at hand" in p
    ], report.problems


def test_a_copy_two_bundles_after_the_original_does_not_verify(tmp_path: Path) -> None:
    log, ceremony, second = _log(_relabelled, (11, 11))  # original 4-7, copy 11-14
    full = [*log, cutoff()]
    w, key = witness(), AuditKey()
    t1, t2 = "2026-03-01T07:00:00.000000Z", "2026-03-01T10:30:00.000000Z"
    # Bundle 2 (entries 8-10, 07:00-10:30) and bundle 3 (entries 11-19, 10:30-24:00),
    # chained exactly as `tests.support.evidence_bundles.chained` chains two.
    middle = build(full, 8, 11, size=12, key=key, witnesses=[w], period=(t1, t2))
    last = build(full, 11, len(log), size=len(full), key=key, witnesses=[w], period=(t2, PERIOD[1]))
    last.manifest["previous_head"] = middle.manifest["covering_head"]
    leaves = [leaf_hash(p.encode()) for p in full]
    last.files["audit/consistency.json"] = json.dumps(
        {"size1": 12, "size2": len(full), "proof": [b64(h) for h in consistency(leaves, 12)]}
    ).encode()
    report = verify_bundle(
        last.write(tmp_path / "third.tar.gz"),
        key.pem,
        middle.write(tmp_path / "second.tar.gz"),
        witness_keys=[w.verifier_key()],
        authorities=["localhost"],
        origin=ORIGIN,
    )
    _checked_both(report, {second})
    assert not [p for p in report.problems if p.startswith("chain")], report.problems
    assert not report.ok, (
        f"Alice's one signed proposal started ceremony {ceremony} two bundles back, within "
        f"its 24 h life; its relabelled copy {second}, on Bob's consent alone, is proven "
        "dual-controlled with --previous: VERIFIED"
    )
    _not_proven(report, second)


def test_daily_bundles_with_a_72_hour_proposal_life(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same with daily bundles (the usual schedule) and the vault's
    ``keys.proposal_ttl_hours`` at 72 (under its bound of 168; the bundle's own
    ``config/settings.json`` says so): the officers' ceremony on 1 March, a quiet 2 March,
    the operator's copy on 3 March at 03:00, 46 h into Alice's proposal. The 3 March
    bundle, verified with the 2 March one as ``--previous``: VERIFIED."""
    made: dict[str, SigningOfficer] = {}

    def recorded(name: str) -> SigningOfficer:
        made[name] = officer = new_software_officer(name)
        return officer

    monkeypatch.setattr(atk48a, "new_software_officer", recorded)
    first_day, ceremony, _unused = _log(_relabelled, (11, 11))
    first_day = first_day[:8] + day_log(20)[8:]  # 1 March: the officers' ceremony only
    proposal = SignedAction.from_json(json.loads(first_day[4])["document"])
    copy = _relabelled(proposal)
    second = copy.ceremony_id()
    quiet = day_log(20, day="2026-03-02")
    quiet[0] = payload("tokenize", "2026-03-02T00:00:00.000000Z", request_id="req-q0")
    third = day_log(20, day="2026-03-03")
    third[0] = payload("tokenize", "2026-03-03T00:00:00.000000Z", request_id="req-t0")
    at = "2026-03-03T03:00:00.000000Z"
    third[3] = payload(
        "key.rotation.propose",
        at,
        actor=atk48a.ALICE,
        key_id=second,
        details={"kind": "kek"},
        document=copy.to_json(),
    )
    approval = signed_action(made["officer-bob"], approval_path(second), created=atk48a._unix(at))
    third[4] = payload(
        "key.rotation.approve",
        "2026-03-03T03:00:00.100000Z",
        actor=atk48a.BOB,
        key_id=second,
        details={"approvals": 1},
        document=approval.to_json(),
    )
    third[5] = atk48a._registration(3, second, copy, approval, "2026-03-03T03:00:00.500000Z")
    third[6] = payload(
        "key.rotation.start",
        "2026-03-03T03:00:00.500000Z",
        actor=atk48a.BOB,
        key_id=second,
        details={"kind": "kek", "old_version": 2, "new_version": 3, "records": 0},
    )
    log = [*first_day, *quiet, *third]
    full = [*log, cutoff("2026-03-04T00:00:00.000000Z")]
    w, key = witness(), AuditKey()
    settings = json.dumps({"keys": {"proposal_ttl_hours": 72}}).encode()
    day2 = build(
        full,
        20,
        40,
        size=41,
        key=key,
        witnesses=[w],
        period=("2026-03-02T00:00:00.000000Z", "2026-03-03T00:00:00.000000Z"),
    )
    day3 = build(
        full,
        40,
        60,
        size=61,
        key=key,
        witnesses=[w],
        period=("2026-03-03T00:00:00.000000Z", "2026-03-04T00:00:00.000000Z"),
    )
    for bundle in (day2, day3):
        bundle.files["config/settings.json"] = settings
    day3.manifest["previous_head"] = day2.manifest["covering_head"]
    leaves = [leaf_hash(p.encode()) for p in full]
    day3.files["audit/consistency.json"] = json.dumps(
        {"size1": 41, "size2": 61, "proof": [b64(h) for h in consistency(leaves, 41)]}
    ).encode()
    report = verify_bundle(
        day3.write(tmp_path / "day3.tar.gz"),
        key.pem,
        day2.write(tmp_path / "day2.tar.gz"),
        witness_keys=[w.verifier_key()],
        authorities=["localhost"],
        origin=ORIGIN,
    )
    _checked_both(report, {second})
    assert report.summary.get("dual_control_proposal_ttl_hours") == 72
    assert not [p for p in report.problems if p.startswith("chain")], report.problems
    assert not report.ok, (
        f"Alice's one signed proposal started ceremony {ceremony} on 1 March; its relabelled "
        f"copy {second}, started 3 March on Bob's consent alone within the 72 h life, is "
        "proven dual-controlled by the daily bundle chained with --previous: VERIFIED"
    )
    _not_proven(report, second)
