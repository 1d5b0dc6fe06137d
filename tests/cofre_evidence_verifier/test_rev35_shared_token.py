"""Review 35: dual control counted two officers whose one registered token signed both.

The vault refuses a policy that registers one MFA key for two identities (review 38):
dual control counts identities, and the second factor would prove only that one person
holds one token. The verifier counted identities too, and took the policy from the
log, where an operator holding the database and the HSM PIN can write a
`policy.reload` the vault never loaded. With Alice and Bob registered under one key
(in a policy of an earlier period, so that no change shows between this ceremony's
proposal and its start), one person proposed as Alice and approved as Bob, and the
verifier proved the rotation dual-controlled. An approval whose officer's registered
key is the proposer's or a counted approver's no longer counts.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import ORIGIN, build, day_log, payload, policy_payload, witness
from tests.support.officers import (
    new_software_officer,
    officers_policy,
    signed_action,
    signed_proposal,
)
from vault.approval_proof import approval_path

ALICE, BOB = "spiffe://cofre/officer-alice", "spiffe://cofre/officer-bob"
AT = "2026-03-01T05:00:00.000000Z"


def _unix(at: str) -> int:
    return int(datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone(UTC).timestamp())


@pytest.mark.parametrize("shared", [False, True], ids=["two tokens", "one token"])
def test_one_token_is_one_officer(tmp_path: Path, shared: bool) -> None:
    alice = new_software_officer("officer-alice")
    bob = alice if shared else new_software_officer("officer-bob")
    policy = officers_policy([(ALICE, alice), (BOB, bob)])
    proposal = signed_proposal(alice, "kek", created=_unix(AT))
    ceremony = proposal.ceremony_id()
    approval = signed_action(bob, approval_path(ceremony), created=_unix(AT) + 60)
    log = day_log(20)
    log[0] = policy_payload("2026-03-01T00:00:00.000000Z", policy)
    log[5] = payload(
        "key.rotation.propose",
        AT,
        actor=ALICE,
        key_id=ceremony,
        details={"kind": "kek"},
        document=proposal.to_json(),
    )
    log[6] = payload(
        "key.rotation.approve",
        "2026-03-01T05:01:00.000000Z",
        actor=BOB,
        key_id=ceremony,
        details={"approvals": 1},
        document=approval.to_json(),
    )
    log[7] = payload(
        "key.rotation.start",
        "2026-03-01T05:01:00.500000Z",
        actor=BOB,
        key_id=ceremony,
        details={"kind": "kek", "old_version": 1, "new_version": 2, "records": 0},
    )
    w = witness()
    bundle = build(log, 3, 20, witnesses=[w])
    path = bundle.write(tmp_path / "b.tar.gz")
    report = verify_bundle(
        path,
        bundle.key.pem,
        witness_keys=[w.verifier_key()],
        authorities=["localhost"],
        origin=ORIGIN,
    )
    if not shared:
        assert report.ok, report.problems
        assert report.summary["dual_control"][0]["approvers"] == [BOB]
        return
    assert not report.ok
    assert any("same registered MFA key" in p for p in report.problems), report.problems
    assert json.dumps(report.summary["dual_control"][0]["proven"]) == "false"
