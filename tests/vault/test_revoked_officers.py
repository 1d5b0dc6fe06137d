"""Review 38: an officer the policy no longer grants key administration takes no part in
a ceremony, neither as its proposer nor through an approval given before.

`KeyRotation.approve` checks the *approving* officer against the policy in force, then
counts every approval stored and the proposer as they were. An officer removed from the
policy (left, or found out) keeps their say: their pending proposal (24 h) runs on one
other officer's approval, and with ``key_approvals_required = 3`` their earlier approval
plus one more officer's starts a rotation two current officers agreed to."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.vault.conftest import ALICE, BOB, CAROL, OFFICERS, TEST_POLICY
from vault.ceremony import CeremonyState
from vault.errors import CeremonyError
from vault.rotation import KeyRotation
from vault.service import VaultService

_DAVE = """
[identities."spiffe://cofre/officer-dave"]
role = "security_officer"
operations = ["key_admin"]
"""


def _policy(text: str) -> PolicyEngine:
    return PolicyEngine(parse_policy(text, kind="toml").policy)


def _without(identity: str, text: str) -> str:
    """`text` with `identity`'s table removed (the officer left)."""
    head = f'[identities."{identity}"]'
    start = text.index(head)
    end = text.find("\n[", start + 1)
    return text[:start] + ("" if end < 0 else text[end + 1 :])


@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_approval_by_an_officer_since_removed_no_longer_counts(
    rig: tuple[VaultService, KeyRotation], engine: Engine, rotation_provider: HSMProvider
) -> None:
    service, rotation = rig
    full = "key_approvals_required = 3\n" + TEST_POLICY + OFFICERS + _DAVE
    service.replace_policy(_policy(full), actor="test", source="test")
    ceremony = rotation.propose(ALICE, "kek")
    assert rotation.approve(BOB, ceremony.id).state == CeremonyState.PENDING
    service.replace_policy(_policy(_without(BOB, full)), actor="test", source="test")
    after = rotation.approve(CAROL, ceremony.id)
    assert after.state == CeremonyState.PENDING, (
        "a rotation started on the approval of an officer the policy no longer knows"
    )


@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_proposal_by_an_officer_since_removed_never_runs(
    rig: tuple[VaultService, KeyRotation], engine: Engine, rotation_provider: HSMProvider
) -> None:
    service, rotation = rig
    ceremony = rotation.propose(ALICE, "kek")
    text = TEST_POLICY + OFFICERS
    service.replace_policy(_policy(_without(ALICE, text)), actor="test", source="test")
    try:
        after = rotation.approve(BOB, ceremony.id)
    except CeremonyError:
        return
    assert after.state == CeremonyState.PENDING, (
        "a rotation proposed by an officer the policy no longer knows ran on one approval"
    )


@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_view_counts_nothing_once_the_proposer_no_longer_stands(
    rig: tuple[VaultService, KeyRotation], engine: Engine, rotation_provider: HSMProvider
) -> None:
    """The officers' view must say what the executor would decide: with the proposer
    removed from the policy, approving is refused whatever was approved before, so no
    approval counts (the ceremony review's residual: the view showed Bob's counting)."""
    service, rotation = rig
    full = "key_approvals_required = 3\n" + TEST_POLICY + OFFICERS + _DAVE
    service.replace_policy(_policy(full), actor="test", source="test")
    ceremony = rotation.propose(ALICE, "kek")
    assert rotation.approve(BOB, ceremony.id).approvals_counting == [BOB]
    service.replace_policy(_policy(_without(ALICE, full)), actor="test", source="test")
    view = rotation.status(BOB, ceremony.id)
    assert view.approvers == [BOB]
    assert view.approvals_counting == []
    with pytest.raises(CeremonyError):
        rotation.approve(CAROL, ceremony.id)
