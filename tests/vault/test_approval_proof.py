"""The stored proof of a ceremony action (`vault.approval_proof`), checked without a
database: what a database writer can and cannot make of one (review appr)."""

from __future__ import annotations

import dataclasses
import time

from tests.support.officers import (
    new_software_officer,
    signed_approval,
    signed_proposal,
    software_officers,
)
from vault.approval_proof import (
    SignedAction,
    approval_path,
    approval_problem,
    proposal_expired,
    proposal_problem,
)

CEREMONY = "2b0f7e0c-0d3a-4c51-8f5e-9d1c6a7b8e90"


def test_a_genuine_approval_verifies_and_names_its_ceremony() -> None:
    bob = new_software_officer("officer-bob")
    stored = signed_approval(bob, CEREMONY).to_json()
    assert approval_problem(stored, bob.pem.encode(), CEREMONY) is None
    assert SignedAction.from_json(stored) == SignedAction.from_json(stored)
    other = "0c6f3a8e-1111-4a2b-9c3d-4e5f6a7b8c9d"
    assert "not this ceremony's approval" in str(approval_problem(stored, bob.pem.encode(), other))
    # Another officer's registered key does not verify it.
    carol = new_software_officer("officer-carol")
    assert "does not verify" in str(approval_problem(stored, carol.pem.encode(), CEREMONY))


def test_an_approval_edited_to_name_another_ceremony_does_not_verify() -> None:
    bob = new_software_officer("officer-bob")
    other = "0c6f3a8e-1111-4a2b-9c3d-4e5f6a7b8c9d"
    genuine = signed_approval(bob, other)
    edited = dataclasses.replace(genuine, path=approval_path(CEREMONY)).to_json()
    assert "does not verify" in str(approval_problem(edited, bob.pem.encode(), CEREMONY))


def test_missing_or_unreadable_proofs_do_not_count() -> None:
    pem = new_software_officer("officer-bob").pem.encode()
    assert "no signature" in str(approval_problem(None, pem, CEREMONY))
    for junk in ("", "[]", '{"method": "POST"}', "not json"):
        assert "not readable" in str(approval_problem(junk, pem, CEREMONY))


def test_a_proposal_names_its_ceremony_and_kind() -> None:
    alice = new_software_officer("officer-alice")
    proposal = signed_proposal(alice, "kek")
    pem = alice.pem.encode()
    ceremony = proposal.ceremony_id()
    assert proposal_problem(proposal.to_json(), pem, ceremony, "kek") is None
    assert "another ceremony" in str(proposal_problem(proposal.to_json(), pem, CEREMONY, "kek"))
    assert "not a data one" in str(proposal_problem(proposal.to_json(), pem, ceremony, "data"))
    # An approval is not a proposal.
    approval = signed_approval(alice, ceremony).to_json()
    assert "not a proposal" in str(proposal_problem(approval, pem, ceremony, "kek"))
    # Two proposals of the same kind open two ceremonies.
    assert signed_proposal(alice, "kek").ceremony_id() != ceremony


def test_a_proof_counts_only_for_the_vault_it_was_signed_for() -> None:
    """A ceremony copied whole from a staging vault where the same keys are registered."""
    bob = new_software_officer("officer-bob")
    stored = signed_approval(bob, CEREMONY, authority="vault.staging.example").to_json()
    pem = bob.pem.encode()
    assert approval_problem(stored, pem, CEREMONY, {"vault.staging.example"}) is None
    refused = approval_problem(stored, pem, CEREMONY, {"vault.example", "10.0.0.1"})
    assert refused == "it was signed for vault.staging.example, not this vault"


def test_a_proposal_counts_only_within_its_signed_life() -> None:
    """Review 26: bounded on both sides by its signed ``created``: a past ceremony
    written back as pending, and one signed for a time still to come (a client clock
    days ahead: the vault refused it at submission, but the signature is genuine)."""
    officer = software_officers()["officer-bob"]
    now = int(time.time())
    life = (now - 86_400 - 300, now + 300)
    for created, problem in [
        (now - 2 * 86_400, "longer ago than a proposal lives"),
        (now + 3 * 86_400, "a time still to come"),
        (now, None),
    ]:
        proposal = signed_proposal(officer, "kek", created=created)
        found = proposal_problem(
            proposal.to_json(), officer.pem.encode(), proposal.ceremony_id(), "kek",
            signed_within=life,
        )  # fmt: skip
        assert (found is None) if problem is None else (problem in str(found)), found
        assert proposal_expired(proposal.to_json(), life) is (problem is not None)
