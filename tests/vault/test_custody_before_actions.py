"""A ceremony counts only actions made after their officer acknowledged key custody (PCI
DSS 3.7.8, `vault._custody_gate.refuse_late_custody`).

Session 35: the custody gate refuses a proposal or an approval by an officer with no
acknowledgement in force, but an approval recorded before the gate existed (a ceremony
pending across the upgrade) passed no gate, and still counted when the ceremony started:
Bob, who never acknowledged, was one of the officers of a rotation that ran. The start
is now refused (`409 ceremony_action_before_custody`), audited as denied, nothing
written; once Bob acknowledges, the ceremony proposed again runs. Real token (a data
rotation on the private one), SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, insert

from audit.log import AuditEvent, AuditLog, Outcome
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.custody import acknowledge_in_process
from tests.support.officers import (
    SigningOfficer,
    new_software_officer,
    signed_approval,
    signed_proposal,
)
from tests.vault.conftest import ALICE, BOB, CAROL, OFFICERS, TEST_POLICY, rotation_of
from vault.ceremony import CeremonyState
from vault.errors import CeremonyActionBeforeCustody
from vault.rotation import KeyRotation
from vault.service import VaultService
from vault.storage.schema import key_approvals, key_ceremonies


@pytest.fixture
def officers() -> dict[str, SigningOfficer]:
    return {i: new_software_officer(i.rpartition("/")[2]) for i in (ALICE, BOB, CAROL)}


@pytest.fixture
def vault(
    engine: Engine, rotation_provider: HSMProvider, officers: dict[str, SigningOfficer]
) -> Iterator[VaultService]:
    """Three officers with a token key each, three needed (Alice proposes, Bob and
    Carol approve); none has acknowledged custody yet."""
    text = "key_approvals_required = 3\n" + TEST_POLICY + OFFICERS
    for identity, officer in officers.items():
        head = f'[identities."{identity}"]\n'
        text = text.replace(head, f'{head}mfa_public_key = """{officer.pem}"""\n')
    policy = PolicyEngine(parse_policy(text, kind="toml").policy)
    service = VaultService(engine, rotation_provider, policy)
    service.initialize()
    try:
        yield service
    finally:
        service.close()


def _acknowledge(engine: Engine, vault: VaultService, officers: dict[str, SigningOfficer]) -> None:
    acknowledge_in_process(engine, vault, vault.policy, officers)


def _entries(engine: Engine, action: str) -> list[dict[str, object]]:
    with engine.connect() as connection:
        payloads = connection.execute(
            sa.text("SELECT payload FROM audit_entries ORDER BY id")
        ).scalars()
        return [e for e in map(json.loads, payloads) if e["action"] == action]


def _approved_by_an_older_vault(
    engine: Engine, ceremony_id: str, officer: SigningOfficer, identity: str
) -> None:
    """`identity`'s approval of `ceremony_id` as a vault before the custody gate recorded
    it (`KeyRotation._approve`): its row, with the signed request, and its entry."""
    proof = signed_approval(officer, ceremony_id).to_json()
    with engine.begin() as connection:
        connection.execute(
            insert(key_approvals).values(
                ceremony_id=ceremony_id,
                officer=identity,
                approved_at=datetime.now(UTC),
                keyid=officer.keyid,
                proof=proof,
            )
        )
        AuditLog().append(
            connection,
            AuditEvent(
                action="key.rotation.approve",
                outcome=Outcome.SUCCESS,
                actor=identity,
                key_id=ceremony_id,
                details={"approvals": 1, "keyid": officer.keyid},
                document=proof,
            ),
        )


def _propose(rotation: KeyRotation, officer: SigningOfficer) -> str:
    proposal = signed_proposal(officer, "data")
    return rotation.propose(ALICE, "data", keyid=officer.keyid, proof=proposal).id


def test_an_approval_made_before_its_officer_acknowledged_does_not_start_a_ceremony(
    engine: Engine,
    rotation_provider: HSMProvider,
    vault: VaultService,
    officers: dict[str, SigningOfficer],
) -> None:
    rotation = rotation_of(vault, engine, rotation_provider)
    _acknowledge(engine, vault, {ALICE: officers[ALICE], CAROL: officers[CAROL]})
    ceremony = _propose(rotation, officers[ALICE])
    _approved_by_an_older_vault(engine, ceremony, officers[BOB], BOB)
    starts = len(_entries(engine, "key.rotation.start"))

    carol = signed_approval(officers[CAROL], ceremony)
    with pytest.raises(CeremonyActionBeforeCustody, match=f"the approval by {BOB}") as refused:
        rotation.approve(CAROL, ceremony, keyid=officers[CAROL].keyid, proof=carol)
    assert "acknowledge-custody" in str(refused.value)
    assert "propose it again" in str(refused.value)
    # Nothing written: Carol's approval rolled back, no start; her denial recorded.
    assert rotation.status(ALICE, ceremony).state == CeremonyState.PENDING
    with engine.connect() as connection:
        approvers = connection.execute(
            sa.select(key_approvals.c.officer).where(key_approvals.c.ceremony_id == ceremony)
        ).scalars()
        assert list(approvers) == [BOB]
    assert len(_entries(engine, "key.rotation.start")) == starts
    [denied] = [e for e in _entries(engine, "key.rotation.approve") if e["outcome"] == "denied"]
    assert (denied["actor"], denied["key_id"]) == (CAROL, ceremony)
    assert BOB in str(denied["details"])

    # The way forward: Bob acknowledges, the ceremony is cancelled and proposed again.
    _acknowledge(engine, vault, {BOB: officers[BOB]})
    with pytest.raises(CeremonyActionBeforeCustody):  # his earlier approval still predates it
        rotation.approve(CAROL, ceremony, keyid=officers[CAROL].keyid, proof=carol)
    rotation.cancel(ALICE, ceremony)
    again = _propose(rotation, officers[ALICE])
    for who in (BOB, CAROL):
        proof = signed_approval(officers[who], again)
        view = rotation.approve(who, again, keyid=officers[who].keyid, proof=proof)
    assert view.state != CeremonyState.PENDING
    assert len(_entries(engine, "key.rotation.start")) == starts + 1


def test_a_proposal_made_before_its_officer_acknowledged_does_not_start_either(
    engine: Engine,
    rotation_provider: HSMProvider,
    vault: VaultService,
    officers: dict[str, SigningOfficer],
) -> None:
    """Alice's proposal recorded by a vault before the gate, Alice never acknowledged:
    Bob's and Carol's approvals are taken (both acknowledged), the start is refused."""
    rotation = rotation_of(vault, engine, rotation_provider)
    _acknowledge(engine, vault, {BOB: officers[BOB], CAROL: officers[CAROL]})
    proposal = signed_proposal(officers[ALICE], "data")
    ceremony = proposal.ceremony_id()
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(
            insert(key_ceremonies).values(
                id=ceremony, kind="data", state=CeremonyState.PENDING.value, proposer=ALICE,
                proposer_keyid=officers[ALICE].keyid, proposer_proof=proposal.to_json(),
                created_at=now, expires_at=now + rotation._ttl,
            )
        )  # fmt: skip
        AuditLog().append(
            connection,
            AuditEvent(
                action="key.rotation.propose",
                outcome=Outcome.SUCCESS,
                actor=ALICE,
                key_id=ceremony,
                details={"kind": "data", "approvals_needed": 2, "keyid": officers[ALICE].keyid},
                document=proposal.to_json(),
            ),
        )
    bob = signed_approval(officers[BOB], ceremony)
    rotation.approve(BOB, ceremony, keyid=officers[BOB].keyid, proof=bob)
    carol = signed_approval(officers[CAROL], ceremony)
    with pytest.raises(CeremonyActionBeforeCustody, match=f"the proposal by {ALICE}"):
        rotation.approve(CAROL, ceremony, keyid=officers[CAROL].keyid, proof=carol)
    assert rotation.status(BOB, ceremony).state == CeremonyState.PENDING
