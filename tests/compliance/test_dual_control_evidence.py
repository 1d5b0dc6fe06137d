"""Dual control of key rotations, proven offline (PCI DSS 3.6.1.2, 3.7.6): the evidence
verifier shows, for every rotation started in a bundle's period, that its proposer and
approvers were the policy's quorum of distinct officers, each action a request signed
by the officer's registered MFA key for that ceremony (`vault.approval_proof`'s
check, re-done by the auditor with no vault, database or HSM).

The attacker is the operator who holds the database and the HSM PIN: they can write any
audit entry (the vault's sequencer signs it into the log with the genuine key, and the
bundle's manifest with it), but not an officer's token signature. Before the verifier
checked the stored proofs, each of these bundles was VERIFIED. Runs against a real
SoftHSM2 token, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from audit.log import DetailValue
from cofre_evidence_verifier.html import render_html
from cofre_evidence_verifier.report import Report, render_text
from tests.api.conftest import VaultServer
from tests.support.officers import (
    SigningOfficer,
    signed_action,
    signed_approval,
    signed_proposal,
    software_officers,
)
from tests.support.vault_evidence import (
    export_to,
    members,
    verify_by_vault_key,
    write_entry,
    write_handover,
)
from vault.approval_proof import SignedAction, approval_path

ALICE, BOB, AUDITOR = (f"spiffe://cofre/{n}" for n in ("officer-alice", "officer-bob", "auditor"))
ROTATIONS = "/v1/admin/keys/rotations"
PAN = "4111111111111111"


def _officer(name: str) -> SigningOfficer:
    return software_officers()[name]


def _stored(proof: SignedAction | None) -> str | None:
    """A proposal or approval's signed request as its audit entry stores it (none: an
    entry with no proof, as the operator or a vault before the proofs wrote it)."""
    return None if proof is None else proof.to_json()


def _rotation(
    vault: VaultServer,
    proposal: SignedAction | None,
    approvals: Sequence[tuple[str, SignedAction | None]],
    *,
    kind: str = "kek",
    proposer: str = ALICE,
    ceremony: str | None = None,
) -> str:
    """Write the entries of a rotation the way the vault writes them: the proposal
    (`proposal`, signed by `proposer`'s token, or none), each approval (officer, signed
    request or none) and the start. Returns the ceremony's id."""
    if ceremony is None:
        ceremony = (
            proposal.ceremony_id()
            if proposal is not None
            else "5b8e0f6a-3c2d-4e1f-9a7b-2c3d4e5f6a7b"
        )
    write_entry(
        vault, "key.rotation.propose", proposer, ceremony, {"kind": kind}, _stored(proposal)
    )
    for n, (officer, proof) in enumerate(approvals, 1):
        approve: dict[str, DetailValue] = {"approvals": n}
        write_entry(vault, "key.rotation.approve", officer, ceremony, approve, _stored(proof))
    start: dict[str, DetailValue] = {"kind": kind, "old_version": 1, "new_version": 2, "records": 0}
    write_entry(
        vault, "key.rotation.start", approvals[-1][0] if approvals else proposer, ceremony, start
    )
    return ceremony


def _failed(vault: VaultServer, since: datetime, out: Path, *expected: str) -> Report:
    report = verify_by_vault_key(export_to(vault, since, out), vault)
    assert not report.ok, "a rotation without proven dual control was VERIFIED"
    for text in expected:
        assert any(text in p for p in report.problems), (text, report.problems)
    return report


def _ceremonies(report: Report) -> dict[str, dict[str, Any]]:
    listed: list[dict[str, Any]] = report.summary["dual_control"]
    return {c["ceremony"]: c for c in listed}


def test_a_rotation_run_through_the_api_is_proven_offline(
    vault: VaultServer, tmp_path: Path
) -> None:
    """The genuine path: Alice proposes before the period starts (her entry reaches the
    bundle with its inclusion proof), Bob approves within it. The report names the
    ceremony, its officers and the quorum, in text and HTML."""
    with vault.client("payments") as c:  # a data key to rotate
        assert c.post("/v1/tokenize", json={"pan": PAN, "format": "uuid"}).is_success
    with vault.client("officer-alice") as c:
        proposed = c.post(ROTATIONS, json={"kind": "data"})
    assert proposed.status_code in (200, 201), proposed.text
    ceremony = proposed.json()["id"]
    since = datetime.now(UTC)
    with vault.client("officer-bob") as c:
        assert c.post(f"{ROTATIONS}/{ceremony}/approve").status_code == 200
    bundle = export_to(vault, since, tmp_path / "genuine.tar.gz")
    report = verify_by_vault_key(bundle, vault)
    assert report.ok, report.problems
    found = _ceremonies(report)[ceremony]
    assert found["proposer"] == ALICE
    assert found["approvers"] == [BOB]
    assert (found["officers"], found["required"], found["proven"]) == (2, 2, True)
    assert any("dual control" in check for check in report.checks), report.checks
    assert ceremony in render_text(report)
    assert ceremony in render_html(report, bundle)
    # The proposal, from before the period, came with its entry and inclusion proof.
    records = json.loads(members(bundle)["keys/dual_control.json"])
    assert any(ceremony in r["payload"] and "rotation.propose" in r["payload"] for r in records)


def test_entries_written_like_the_vault_s_with_genuine_signatures_verify(
    vault: VaultServer, tmp_path: Path
) -> None:
    """The control for the attacks below: the same builder, with both officers' genuine
    signed requests, is proven (the failures below are the forgeries', not the
    builder's)."""
    since = datetime.now(UTC)
    proposal = signed_proposal(_officer("officer-alice"), "kek")
    ceremony = proposal.ceremony_id()
    _rotation(vault, proposal, [(BOB, signed_approval(_officer("officer-bob"), ceremony))])
    report = verify_by_vault_key(export_to(vault, since, tmp_path / "control.tar.gz"), vault)
    assert report.ok, report.problems
    assert _ceremonies(report)[ceremony]["proven"] is True


def test_a_ceremony_id_the_log_masks_is_still_proven(vault: VaultServer, tmp_path: Path) -> None:
    """One ceremony id in about 280 ends in twelve decimal digits, which the audit log's
    PAN mask hides in the approval's stored path (the entry's key id is kept whole): the
    verifier checks the signature over the path the ceremony's id gives, so a genuine
    approval still counts."""
    alice, bob = _officer("officer-alice"), _officer("officer-bob")
    proposal = signed_proposal(alice, "kek")
    while not proposal.ceremony_id().rsplit("-", 1)[1].isdigit():
        proposal = signed_proposal(alice, "kek")
    ceremony = proposal.ceremony_id()
    since = datetime.now(UTC)
    _rotation(vault, proposal, [(BOB, signed_approval(bob, ceremony))])
    bundle = export_to(vault, since, tmp_path / "masked.tar.gz")
    entries = members(bundle)["audit/entries.jsonl"].decode()
    assert ceremony.rsplit("-", 1)[1] not in entries.replace(f'\\"key_id\\":\\"{ceremony}', "")
    report = verify_by_vault_key(bundle, vault)
    assert report.ok, report.problems
    assert _ceremonies(report)[ceremony]["approvers"] == [BOB]


def test_an_approval_written_straight_into_the_database_fails(
    vault: VaultServer, tmp_path: Path
) -> None:
    since = datetime.now(UTC)
    proposal = signed_proposal(_officer("officer-alice"), "kek")
    ceremony = _rotation(vault, proposal, [(BOB, None)])
    report = _failed(vault, since, tmp_path / "forged.tar.gz", "the approval by " + BOB)
    assert _ceremonies(report)[ceremony]["proven"] is False


def test_an_approval_signed_by_another_key_fails(vault: VaultServer, tmp_path: Path) -> None:
    """Bob's approval, signed with Alice's token (the operator has neither: any key
    but Bob's registered one stands for a forgery)."""
    since = datetime.now(UTC)
    proposal = signed_proposal(_officer("officer-alice"), "kek")
    forged = signed_approval(_officer("officer-alice"), proposal.ceremony_id())
    _rotation(vault, proposal, [(BOB, forged)])
    _failed(vault, since, tmp_path / "other-key.tar.gz", "does not verify under " + BOB)


def test_the_proposer_approving_fails(vault: VaultServer, tmp_path: Path) -> None:
    since = datetime.now(UTC)
    alice = _officer("officer-alice")
    proposal = signed_proposal(alice, "kek")
    _rotation(vault, proposal, [(ALICE, signed_approval(alice, proposal.ceremony_id()))])
    _failed(vault, since, tmp_path / "self.tar.gz", "the proposer approved", "1 of the 2")


def test_an_approval_of_another_ceremony_fails(vault: VaultServer, tmp_path: Path) -> None:
    since = datetime.now(UTC)
    proposal = signed_proposal(_officer("officer-alice"), "kek")
    elsewhere = signed_approval(_officer("officer-bob"), "0c6f3a8e-1111-4a2b-9c3d-4e5f6a7b8c9d")
    _rotation(vault, proposal, [(BOB, elsewhere)])
    _failed(vault, since, tmp_path / "moved.tar.gz", "not this ceremony's approval")


def test_an_approval_edited_to_name_this_ceremony_fails(vault: VaultServer, tmp_path: Path) -> None:
    since = datetime.now(UTC)
    proposal = signed_proposal(_officer("officer-alice"), "kek")
    elsewhere = signed_approval(_officer("officer-bob"), "0c6f3a8e-1111-4a2b-9c3d-4e5f6a7b8c9d")
    edited = replace(elsewhere, path=approval_path(proposal.ceremony_id()))
    _rotation(vault, proposal, [(BOB, edited)])
    _failed(vault, since, tmp_path / "edited.tar.gz", "does not verify under " + BOB)


def test_a_non_officer_approving_fails(vault: VaultServer, tmp_path: Path) -> None:
    """The auditor has a registered MFA key but no key administration."""
    since = datetime.now(UTC)
    proposal = signed_proposal(_officer("officer-alice"), "kek")
    approval = signed_approval(_officer("auditor"), proposal.ceremony_id())
    _rotation(vault, proposal, [(AUDITOR, approval)])
    _failed(vault, since, tmp_path / "auditor.tar.gz", "not a security officer")


def test_a_proposal_from_another_day_replayed_fails(vault: VaultServer, tmp_path: Path) -> None:
    """A past ceremony's genuine proofs written again with a new start: its proposal was
    signed longer ago than a proposal lives."""
    since = datetime.now(UTC)
    old = int((datetime.now(UTC) - timedelta(days=3)).timestamp())
    proposal = signed_proposal(_officer("officer-alice"), "kek", created=old)
    approval = signed_approval(_officer("officer-bob"), proposal.ceremony_id())
    _rotation(vault, proposal, [(BOB, approval)])
    _failed(vault, since, tmp_path / "replayed.tar.gz", "longer ago than a proposal lives")


def test_a_proposal_of_another_kind_or_not_a_proposal_fails(
    vault: VaultServer, tmp_path: Path
) -> None:
    since = datetime.now(UTC)
    alice = _officer("officer-alice")
    proposal = signed_proposal(alice, "data")  # a data proposal, claimed to start a kek
    _rotation(
        vault, proposal, [(BOB, signed_approval(_officer("officer-bob"), proposal.ceremony_id()))]
    )
    _failed(vault, since, tmp_path / "kind.tar.gz", "not a kek one")
    since = datetime.now(UTC)
    cancel = signed_action(alice, f"{ROTATIONS}/x/cancel")
    _rotation(
        vault, cancel, [(BOB, signed_approval(_officer("officer-bob"), cancel.ceremony_id()))]
    )
    _failed(vault, since, tmp_path / "cancel.tar.gz", "not a proposal")


def test_a_rotation_without_any_proof_is_not_proven(vault: VaultServer, tmp_path: Path) -> None:
    """What a vault before the proofs were logged (or an in-process caller counting
    unsigned officers) wrote: the log claims dual control it cannot show."""
    since = datetime.now(UTC)
    ceremony = _rotation(vault, None, [(BOB, None)])
    report = _failed(vault, since, tmp_path / "unproven.tar.gz", "not proven")
    assert _ceremonies(report)[ceremony]["proven"] is False
    assert "NOT PROVEN" in render_text(report) or "not proven" in render_text(report)


def test_a_start_with_no_proposal_at_all_fails(vault: VaultServer, tmp_path: Path) -> None:
    since = datetime.now(UTC)
    start: dict[str, DetailValue] = {"kind": "kek", "old_version": 1, "new_version": 2}
    write_entry(vault, "key.rotation.start", BOB, "7d3f2a1b-0c9e-4d8f-a6b5-c4d3e2f1a0b9", start)
    _failed(vault, since, tmp_path / "bare.tar.gz", "no proposal")


def test_an_audit_key_handover_needs_a_proven_ceremony(vault: VaultServer, tmp_path: Path) -> None:
    """The audit-key handover entry (what moves the auditor's pinned key on) names its
    ceremony: one with no started ceremony in the bundle is not dual-controlled."""
    since = datetime.now(UTC)
    ceremony = "9e8d7c6b-5a49-4382-9170-6f5e4d3c2b1a"
    write_handover(vault, BOB, "cofre-audit-v1", "cofre-audit-v2", ceremony)
    _failed(vault, since, tmp_path / "handover.tar.gz", "handover")


def test_one_officer_approving_twice_counts_once(vault: VaultServer, tmp_path: Path) -> None:
    """Three officers required: Alice's proposal and Bob's approval twice (both genuine
    signatures) are two officers, not three."""
    runtime = vault.runtime
    policy_file = runtime.settings.policy_file
    assert policy_file is not None
    policy_file.write_text("key_approvals_required = 3\n" + policy_file.read_text())
    assert runtime.reload_policy()
    since = datetime.now(UTC)
    bob = _officer("officer-bob")
    proposal = signed_proposal(_officer("officer-alice"), "kek")
    ceremony = proposal.ceremony_id()
    twice = [(BOB, signed_approval(bob, ceremony)), (BOB, signed_approval(bob, ceremony))]
    _rotation(vault, proposal, twice)
    report = _failed(vault, since, tmp_path / "twice.tar.gz", "approved twice", "2 of the 3")
    assert _ceremonies(report)[ceremony]["officers"] == 2
