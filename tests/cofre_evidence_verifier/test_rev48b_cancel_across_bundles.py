"""rev48b (review of 4991274): check 6c reads `key.rotation.cancel` only in the bundle
at hand, and the exporter never carries a cancel as a record.

`dual_control_log.cancels` reads the pool: this period's entries and the records of
``keys/dual_control.json``. But the exporter's records are only the propose, approve
and start entries of the ceremonies started in the period
(`compliance.dual_control._ACTIONS`), never a cancel; and `started_before` (the
``--previous`` cross-check) looks at the previous bundle's starts only, never its
cancels. A proposal lives 24 h by default (up to 168 h), so Alice's proposal and her
cancel of it fall in one period and the start the operator writes on Bob's approval
alone in the next, within the proposal's life: the bundle of that next period, verified
with the previous one as ``--previous``, shows the rotation as dual-controlled
(VERIFIED). The auditor guide's sizing advice (proposal life shorter than the period,
verify with ``--previous``) does not help: it is followed here (8 h proposal life,
periods of 10 h and 14 h), and the cancel is in the previous bundle.

These tests assert the behaviour the commit claims ("a ceremony fails when a successful
cancel of it ... was logged before its start"); they failed on 4991274, except the
`in-records` controls, which show the check works once the cancel is in the pool. Now
`started_before` reads the previous bundle's cancels too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cofre_evidence_verifier.merkle import leaf_hash
from cofre_evidence_verifier.request_signature import SignedRequest
from cofre_evidence_verifier.verify import verify_bundle
from tests.cofre_evidence_verifier.test_atk48a_proposal_variant import (
    ALICE,
    BOB,
    _registration,
    _relabelled,
    _unix,
)
from tests.support.evidence_bundles import (
    ORIGIN,
    AuditKey,
    b64,
    chained,
    cutoff,
    day_log,
    inclusion,
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

SPLIT = 10  # entry 10 (10:00) opens the second period (`chained`)
TTL_HOURS = 8  # the start (12:00) is 7 h after Alice signed (05:00)


def _log(*, copy: bool) -> tuple[list[str], str]:
    """Alice proposes a KEK rotation at 05:00 (entry 4) and cancels it at 05:30 (entry 5,
    naming the proposal's digest, as the vault writes it): both in the first period.
    In the second period, 7 h into the proposal's 24 h life, the operator starts it on
    Bob's approval alone (entries 12-14): under its own id set back to pending, or
    (`copy`) under a relabelled copy of the signed proposal whose propose entry the
    operator writes at entry 11. Returns the log and the started ceremony's id."""
    alice, bob = new_software_officer("officer-alice"), new_software_officer("officer-bob")
    at = "2026-03-01T05:00:00.000000Z"
    proposal = signed_proposal(alice, "kek", created=_unix(at))
    ceremony = proposal.ceremony_id()
    digest = SignedRequest.from_json(proposal.to_json()).proposal_digest()
    log = day_log(20)
    log[0] = policy_payload(
        "2026-03-01T00:00:00.000000Z", officers_policy([(ALICE, alice), (BOB, bob)])
    )
    log[4] = payload(
        "key.rotation.propose", at, actor=ALICE, key_id=ceremony,
        details={"kind": "kek"}, document=proposal.to_json(),
    )  # fmt: skip
    log[5] = payload(
        "key.rotation.cancel", "2026-03-01T05:30:00.000000Z", actor=ALICE, key_id=ceremony,
        details={"proposal": digest},
    )  # fmt: skip
    started = _relabelled(proposal) if copy else proposal
    second = started.ceremony_id()
    if copy:
        log[11] = payload(
            "key.rotation.propose", "2026-03-01T11:00:00.000000Z", actor=ALICE,
            key_id=second, details={"kind": "kek"}, document=started.to_json(),
        )  # fmt: skip
    approved = "2026-03-01T12:00:00.000000Z"
    approval = signed_action(bob, approval_path(second), created=_unix(approved))
    log[12] = payload(
        "key.rotation.approve", approved, actor=BOB, key_id=second,
        details={"approvals": 1}, document=approval.to_json(),
    )  # fmt: skip
    log[13] = _registration(2, second, started, approval, "2026-03-01T12:00:00.500000Z")
    log[14] = payload(
        "key.rotation.start", "2026-03-01T12:00:00.500000Z", actor=BOB, key_id=second,
        details={"kind": "kek", "old_version": 1, "new_version": 2, "records": 0},
    )  # fmt: skip
    return log, second


def _records(log: list[str], indexes: list[int]) -> bytes:
    """``keys/dual_control.json`` of the second bundle with the entries `indexes`, each
    with its inclusion proof in the second bundle's covering head (log + cutoff)."""
    full = [*log, cutoff()]
    leaves = [leaf_hash(p.encode()) for p in full]
    return json.dumps(
        [
            {"index": i, "payload": full[i], "proof": [b64(h) for h in inclusion(leaves, i)]}
            for i in indexes
        ]
    ).encode()


@pytest.mark.parametrize(
    ("copy", "cancel_in_records"),
    [(True, False), (False, False), (True, True), (False, True)],
    ids=["copy", "same-id-exporter-records", "copy-in-records", "same-id-in-records"],
)
def test_a_cancel_in_the_previous_bundle_fails_the_start(
    tmp_path: Path, copy: bool, cancel_in_records: bool
) -> None:
    log, started = _log(copy=copy)
    w, key = witness(), AuditKey()
    first, then = chained(log, SPLIT, key=key, witnesses=[w])
    # The auditor guide's sizing advice followed: a proposal life (8 h) at least 10 min
    # shorter than either period (00:00-10:00, 10:00-24:00), and --previous given.
    for bundle in (first, then):
        bundle.files["config/settings.json"] = json.dumps(
            {"keys": {"proposal_ttl_hours": TTL_HOURS}}
        ).encode()
    # What `compliance.dual_control.dual_control_records` exports for the ceremony
    # started in the second period: its propose, approve and start entries (the copy's
    # are all in the period; the same id's proposal is entry 4, before it). Never the
    # cancel, unless the control variant adds it.
    indexes = [] if copy else [4, 12, 14]
    if cancel_in_records:
        indexes = sorted({*indexes, 5})
    if indexes:
        then.files["keys/dual_control.json"] = _records(log, indexes)
    report = verify_bundle(
        then.write(tmp_path / "second.tar.gz"),
        key.pem,
        first.write(tmp_path / "first.tar.gz"),
        witness_keys=[w.verifier_key()],
        authorities=["localhost"],
        origin=ORIGIN,
    )
    summary = report.summary.get("dual_control")
    assert isinstance(summary, list)
    assert started in {c["ceremony"] for c in summary}, summary
    assert not [p for p in report.problems if p.startswith("chain")], report.problems
    assert report.summary.get("dual_control_proposal_ttl_hours") == TTL_HOURS
    assert not report.ok, (
        f"Alice cancelled her proposal at entry 5 (previous bundle); ceremony {started}, "
        "started on it at entry 14 on Bob's approval alone within the proposal's life, is "
        "proven dual-controlled with --previous: VERIFIED"
    )
