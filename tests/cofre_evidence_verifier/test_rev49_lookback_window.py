"""rev49 (review of session 49's lookback, `earlier.lookback_problems`): the 300 s window.

Session 49 fails a ceremony whose verified proposal was signed before the oldest bundle
at hand begins: an earlier start of that signed proposal would lie in a bundle not given.
That holds only if a proposal's start is never logged before its signature's ``created``.
But check 6c itself lets a signature's ``created`` lie up to `WINDOW_SECONDS` (300 s)
after the start it counts for (clocks of the officer's token and of the vault differ;
`dual_control._check_proposal`): the auditor, verifying the bundle that holds the
officers' genuine ceremony, passed a start logged up to 300 s before its proposal's
``created``. The operator who runs the vault (its clock) and the exports (where a
period ends) can therefore have the genuine start land just before a bundle's end while
the proposal's ``created`` lies just after it: then the lookback sees a proposal signed
inside the bundles at hand, the genuine start is in the bundle before them, and the copy
of that proposal under another id, started on Bob's consent alone, verifies with
``--previous`` as dual-controlled (rev48's attack, at the boundary).

Here the officers' ceremony is logged 06:58-06:58:30 (bundle 1, 00:00-07:00), Alice's
token signed its proposal at 07:01 (three minutes ahead of the vault's clock, inside the
window), bundle 2 covers 07:00-10:30, and the copy starts at 12:00 in bundle 3.
Bundle 1 on its own verifies (the window), and bundle 3 with ``--previous`` bundle 2
must not: whether the signed proposal started a rotation is in bundle 1, not given.

Second test: the oldest bundle at hand that starts the log (entry 0) has nothing before
it, so a proposal signed just before its period (the officer signed, the vault logged
it a moment later) is not a reason to fail a genuine ceremony.
"""

from __future__ import annotations

from pathlib import Path

from cofre_evidence_verifier.earlier import lookback_problems
from cofre_evidence_verifier.verify import verify_bundle
from tests.cofre_evidence_verifier.test_atk48a_proposal_variant import (
    ALICE,
    BOB,
    _registration,
    _relabelled,
    _unix,
)
from tests.cofre_evidence_verifier.test_s49_earlier_bundles import _three as three_bundles
from tests.support.evidence_bundles import (
    ORIGIN,
    PERIOD,
    AuditKey,
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


def _log() -> tuple[list[str], str, str]:
    alice, bob = new_software_officer("officer-alice"), new_software_officer("officer-bob")
    log = day_log(20)
    log[0] = policy_payload(PERIOD[0], officers_policy([(ALICE, alice), (BOB, bob)]))
    # Alice's token is three minutes ahead of the vault's clock (inside the window).
    proposal = signed_proposal(alice, "kek", created=_unix("2026-03-01T07:01:00.000000Z"))
    ceremony = proposal.ceremony_id()
    log[4] = payload(
        "key.rotation.propose",
        "2026-03-01T06:58:00.000000Z",
        actor=ALICE,
        key_id=ceremony,
        details={"kind": "kek"},
        document=proposal.to_json(),
    )
    approval = signed_action(
        bob, approval_path(ceremony), created=_unix("2026-03-01T06:58:20.000000Z")
    )
    log[5] = payload(
        "key.rotation.approve",
        "2026-03-01T06:58:20.000000Z",
        actor=BOB,
        key_id=ceremony,
        details={"approvals": 1},
        document=approval.to_json(),
    )
    started = "2026-03-01T06:58:20.500000Z"
    log[6] = _registration(2, ceremony, proposal, approval, started)
    log[7] = payload(
        "key.rotation.start",
        started,
        actor=BOB,
        key_id=ceremony,
        details={"kind": "kek", "old_version": 1, "new_version": 2, "records": 0},
    )
    # The operator's copy of the proposal under another id, approved by Bob alone.
    copy = _relabelled(proposal)
    second = copy.ceremony_id()
    log[11] = payload(
        "key.rotation.propose",
        "2026-03-01T11:00:00.000000Z",
        actor=ALICE,
        key_id=second,
        details={"kind": "kek"},
        document=copy.to_json(),
    )
    approved = "2026-03-01T12:00:00.000000Z"
    again = signed_action(bob, approval_path(second), created=_unix(approved))
    log[12] = payload(
        "key.rotation.approve",
        approved,
        actor=BOB,
        key_id=second,
        details={"approvals": 1},
        document=again.to_json(),
    )
    log[13] = _registration(3, second, copy, again, "2026-03-01T12:00:00.500000Z")
    log[14] = payload(
        "key.rotation.start",
        "2026-03-01T12:00:00.500000Z",
        actor=BOB,
        key_id=second,
        details={"kind": "kek", "old_version": 2, "new_version": 3, "records": 0},
    )
    return log, ceremony, second


def test_a_copy_of_a_proposal_signed_inside_the_window_after_the_bundle_began(
    tmp_path: Path,
) -> None:
    log, ceremony, second = _log()
    w, key = witness(), AuditKey()
    first, middle, last = three_bundles(log, key, w)  # 00:00-07:00, 07:00-10:30, 10:30-24:00
    pins = {"witness_keys": [w.verifier_key()], "authorities": ["localhost"], "origin": ORIGIN}
    a = first.write(tmp_path / "a.tar.gz")
    b = middle.write(tmp_path / "b.tar.gz")
    c = last.write(tmp_path / "c.tar.gz")
    # The officers' genuine ceremony verifies in its own bundle: the window allows it.
    genuine = verify_bundle(a, key.pem, None, **pins)  # type: ignore[arg-type]
    assert genuine.ok, genuine.problems
    assert [x["ceremony"] for x in genuine.summary["dual_control"]] == [ceremony]
    # With the bundle before it, the copy fails (found there): the chain is sound.
    chained = verify_bundle(c, key.pem, b, earlier=[a], **pins)  # type: ignore[arg-type]
    assert not chained.ok
    assert [p for p in chained.problems if "under another id" in p], chained.problems
    # With --previous alone, the genuine start is not at hand: not proven.
    report = verify_bundle(c, key.pem, b, **pins)  # type: ignore[arg-type]
    assert [x["ceremony"] for x in report.summary["dual_control"]] == [second]
    assert not report.ok, (
        f"the copy {second} of the proposal that started {ceremony} in the bundle before "
        "--previous verified: the lookback compared the proposal's created with the "
        "period's start without the 300 s window check 6c allows a start"
    )
    assert [p for p in report.problems if "the oldest bundle at hand begins" in p], report.problems


def test_a_lookback_to_the_log_s_first_bundle_has_nothing_before_it() -> None:
    """The oldest bundle at hand starts the log: no earlier bundle exists to give."""
    ceremonies = [
        {
            "ceremony": "c1",
            "start_entry": 9,
            "proposal_signed_at": "2026-02-28T23:59:50+00:00",
        }
    ]
    assert lookback_problems(ceremonies, PERIOD[0])  # an ordinary oldest bundle: not proven
    assert lookback_problems(ceremonies, PERIOD[0], starts_log=True) == []
