"""Session 40 (an independent QSA-side attack): an entry's time in another spelling.

The period's bounds and the entries just outside it must be spelt as the vault spells
every time (UTC, microseconds, ``Z``: review 30, 35), since times are compared as text.
The entries of the range were not: one needed only to sort inside the period. Check 6c
reads an entry's time as an instant, offset included, so an entry dated
``2026-03-01T10:01:00.500000+05:00`` sorted inside a period starting at 10:00Z while
standing, for dual control, at 05:01Z, five hours earlier.

The attack (the operator who holds the database and the HSM PIN, no officer): Alice
and Bob ran one KEK rotation yesterday morning, in the previous bundle's period. In
this period the operator writes a second ``key.rotation.start`` of that ceremony (a
rotation to a version nobody approved) dated with an offset that puts its instant
within the MFA window after Bob's approval, and exports with the proposal and the
approval as ``keys/dual_control.json`` records, leaving the genuine start out. The
verifier, even with ``--previous``, proved the second rotation dual-controlled: the
bundle was VERIFIED. Every entry of the range must now be spelt as the vault spells
it, and check 6c and the custody check read no time in another spelling.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from cofre_evidence_verifier.dual_control_log import entry_time
from cofre_evidence_verifier.merkle import leaf_hash
from cofre_evidence_verifier.report import Report
from cofre_evidence_verifier.verify import verify_bundle
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

ALICE, BOB = "spiffe://cofre/officer-alice", "spiffe://cofre/officer-bob"
AT = "2026-03-01T05:00:00.000000Z"
START_DETAILS = {"kind": "kek", "old_version": 1, "new_version": 2, "records": 0}


def _unix(at: str) -> int:
    return int(datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone(UTC).timestamp())


def _attack(tmp_path: Path, forged_time: str) -> Report:
    alice, bob = new_software_officer("officer-alice"), new_software_officer("officer-bob")
    policy = officers_policy([(ALICE, alice), (BOB, bob)])
    proposal = signed_proposal(alice, "kek", created=_unix(AT))
    ceremony = proposal.ceremony_id()
    approval = signed_action(bob, approval_path(ceremony), created=_unix(AT) + 60)
    log = day_log(20)
    log[0] = policy_payload("2026-03-01T00:00:00.000000Z", policy)
    propose = {"actor": ALICE, "key_id": ceremony, "details": {"kind": "kek"}}
    log[5] = payload("key.rotation.propose", AT, **propose, document=proposal.to_json())
    approve = {"actor": BOB, "key_id": ceremony, "details": {"approvals": 1}}
    log[6] = payload(
        "key.rotation.approve",
        "2026-03-01T05:01:00.000000Z",
        **approve,
        document=approval.to_json(),
    )
    start = {"actor": BOB, "key_id": ceremony}
    log[7] = payload(
        "key.rotation.start", "2026-03-01T05:01:00.500000Z", **start, details=START_DETAILS
    )
    # This period (from 10:00Z): the operator's second start of the same ceremony.
    log[12] = payload(
        "key.rotation.start",
        forged_time,
        **start,
        details={**START_DETAILS, "old_version": 2, "new_version": 3},
    )
    w, key = witness(), AuditKey()
    first, second = chained(log, 10, key=key, witnesses=[w])
    # The exporter's records: the proposal and the approval, not yesterday's start.
    leaves = [leaf_hash(p.encode()) for p in [*log, cutoff()]]
    records = [
        {"index": i, "payload": log[i], "proof": [b64(h) for h in inclusion(leaves, i)]}
        for i in (5, 6)
    ]
    second.files["keys/dual_control.json"] = json.dumps(records).encode()
    report = verify_bundle(
        second.write(tmp_path / "second.tar.gz"),
        key.pem,
        first.write(tmp_path / "first.tar.gz"),
        witness_keys=[w.verifier_key()],
        authorities=["localhost"],
        origin=ORIGIN,
    )
    return report


def test_a_start_dated_back_by_an_offset_does_not_reuse_yesterdays_approval(
    tmp_path: Path,
) -> None:
    report = _attack(tmp_path, "2026-03-01T10:01:00.500000+05:00")
    problems = report.problems
    assert not report.ok, "a rotation nobody approved, proven dual-controlled: VERIFIED"
    assert any("entry 12 is not dated as the vault dates entries" in p for p in problems), problems


def test_the_same_start_in_the_vaults_spelling_is_not_proven(tmp_path: Path) -> None:
    # Dated when it was written (its instant in the period), the second start is far
    # past the MFA window after Bob's approval: check 6c already refused it.
    report = _attack(tmp_path, "2026-03-01T12:00:12.000000Z")
    problems = report.problems
    assert not report.ok
    assert any("completing its quorum" in p for p in problems), problems


def test_check_6c_reads_no_time_in_another_spelling() -> None:
    assert entry_time({"time": "2026-03-01T05:01:00.500000Z"}) == _unix(
        "2026-03-01T05:01:00.500000Z"
    )
    for spelt in ("2026-03-01T10:01:00.500000+05:00", "2026-03-01T05:01:00Z", "2026-03-01"):
        assert entry_time({"time": spelt}) is None, spelt


def test_a_start_of_a_ceremony_the_previous_bundle_started_fails_the_chain(
    tmp_path: Path,
) -> None:
    """The same attack without an offset: the officers' rotation ran two minutes before
    the period's end (approval at 09:58Z, its start in the same transaction), and the
    operator's second start, at 10:01Z, is the next period's, within the MFA window
    after the approval and in the vault's spelling. Alone the bundle cannot tell that
    the ceremony had already started; its previous bundle can, and with `--previous`
    the second start fails."""
    log = day_log(20)
    at = "2026-03-01T09:57:00.000000Z"
    alice, bob = new_software_officer("officer-alice"), new_software_officer("officer-bob")
    policy = officers_policy([(ALICE, alice), (BOB, bob)])
    proposal = signed_proposal(alice, "kek", created=_unix(at))
    ceremony = proposal.ceremony_id()
    approval = signed_action(bob, approval_path(ceremony), created=_unix(at) + 60)
    log[0] = policy_payload("2026-03-01T00:00:00.000000Z", policy)
    propose = {"actor": ALICE, "key_id": ceremony, "details": {"kind": "kek"}}
    log[7] = payload("key.rotation.propose", at, **propose, document=proposal.to_json())
    approve = {"actor": BOB, "key_id": ceremony, "details": {"approvals": 1}}
    log[8] = payload(
        "key.rotation.approve",
        "2026-03-01T09:58:00.000000Z",
        **approve,
        document=approval.to_json(),
    )
    start = {"actor": BOB, "key_id": ceremony}
    log[9] = payload(
        "key.rotation.start", "2026-03-01T09:58:00.500000Z", **start, details=START_DETAILS
    )
    log[11] = payload(
        "key.rotation.start",
        "2026-03-01T10:01:00.000000Z",
        **start,
        details={**START_DETAILS, "old_version": 2, "new_version": 3},
    )
    w, key = witness(), AuditKey()
    first, second = chained(log, 10, key=key, witnesses=[w])
    leaves = [leaf_hash(p.encode()) for p in [*log, cutoff()]]
    second.files["keys/dual_control.json"] = json.dumps(
        [
            {"index": i, "payload": log[i], "proof": [b64(h) for h in inclusion(leaves, i)]}
            for i in (7, 8)
        ]
    ).encode()
    path = second.write(tmp_path / "second.tar.gz")
    report = verify_bundle(
        path,
        key.pem,
        first.write(tmp_path / "first.tar.gz"),
        witness_keys=[w.verifier_key()],
        authorities=["localhost"],
        origin=ORIGIN,
    )
    assert not report.ok, "one approval, two rotations across a period boundary: VERIFIED"
    assert any(
        f"ceremony {ceremony} started at entry 11 was already started by entry 9 of the "
        "previous bundle" in p
        for p in report.problems
    ), report.problems
    # Without the previous bundle this is the bound the guide states.
    alone = verify_bundle(
        path, key.pem, witness_keys=[w.verifier_key()], authorities=["localhost"], origin=ORIGIN
    )
    assert alone.ok, alone.problems
