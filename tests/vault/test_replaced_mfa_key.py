"""Review cer: a ceremony action counts only while the MFA key that signed it is still
the officer's registered key. With ``key_approvals_required = 3``, an approval signed by
a token since replaced in the policy no longer counts toward the quorum, and the same
token registered again under a second identity cannot count twice."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine

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
from vault.errors import CeremonyError
from vault.httpsig import jwk_thumbprint
from vault.service import VaultService


def _pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _officers() -> dict[str, SigningOfficer]:
    """Alice, Bob and Carol with a token key each: their actions carry signed proofs."""
    return {i: new_software_officer(i.rpartition("/")[2]) for i in (ALICE, BOB, CAROL)}


def _policy(keys: dict[str, str]) -> PolicyEngine:
    text = "key_approvals_required = 3\n" + TEST_POLICY + OFFICERS
    for identity, pem in keys.items():
        head = f'[identities."{identity}"]\n'
        text = text.replace(head, f'{head}mfa_public_key = """{pem}"""\n')
    return PolicyEngine(parse_policy(text, kind="toml").policy)


def test_an_approval_by_a_replaced_mfa_key_no_longer_counts(
    engine: Engine, rotation_provider: HSMProvider
) -> None:
    officers = _officers()
    keys = {identity: officer.pem for identity, officer in officers.items()}
    policy = [_policy(keys)]
    service = VaultService(engine, rotation_provider, policy[0])
    service.initialize()
    acknowledge_in_process(engine, service, policy[0], officers)
    try:
        rotation = rotation_of(service, engine, rotation_provider)
        rotation._policy = lambda: policy[0]
        thumb = {identity: jwk_thumbprint(pem.encode()) for identity, pem in keys.items()}
        proposal = signed_proposal(officers[ALICE], "fingerprint")
        ceremony = rotation.propose(ALICE, "fingerprint", keyid=thumb[ALICE], proof=proposal)
        bob = signed_approval(officers[BOB], ceremony.id)
        rotation.approve(BOB, ceremony.id, keyid=thumb[BOB], proof=bob)
        policy[0] = _policy({**keys, BOB: _pem()})  # Bob's token reported stolen
        carol = signed_approval(officers[CAROL], ceremony.id)
        view = rotation.approve(CAROL, ceremony.id, keyid=thumb[CAROL], proof=carol)
        assert view.state == CeremonyState.PENDING
        with pytest.raises(CeremonyError, match="no longer registers"):
            rotation.approve(BOB, ceremony.id, keyid=thumb[BOB], proof=bob)
    finally:
        service.close()


def test_the_audit_log_names_the_mfa_key_behind_each_proposal_and_approval(
    engine: Engine, rotation_provider: HSMProvider
) -> None:
    """The evidence of dual control: which token key signed each ceremony action, so an
    auditor can check that two distinct second factors took part (and which were
    replaced since). The entries named only the identities."""
    officers = _officers()
    keys = {identity: officer.pem for identity, officer in officers.items()}
    service = VaultService(engine, rotation_provider, _policy(keys))
    service.initialize()
    acknowledge_in_process(engine, service, service.policy, officers)
    try:
        rotation = rotation_of(service, engine, rotation_provider)
        thumb = {identity: jwk_thumbprint(pem.encode()) for identity, pem in keys.items()}
        proposal = signed_proposal(officers[ALICE], "fingerprint")
        ceremony = rotation.propose(ALICE, "fingerprint", keyid=thumb[ALICE], proof=proposal)
        bob = signed_approval(officers[BOB], ceremony.id)
        rotation.approve(BOB, ceremony.id, keyid=thumb[BOB], proof=bob)
        with engine.connect() as connection:
            payloads = [
                json.loads(p)
                for p in connection.execute(
                    sa.text("SELECT payload FROM audit_entries WHERE payload LIKE :p"),
                    {"p": '%"action":"key.rotation.%'},
                ).scalars()
            ]
        named = {
            (e["action"], e["actor"]): e["details"].get("keyid")
            for e in payloads
            if e["action"] in {"key.rotation.propose", "key.rotation.approve"}
        }
        assert named == {
            ("key.rotation.propose", ALICE): thumb[ALICE],
            ("key.rotation.approve", BOB): thumb[BOB],
        }
    finally:
        service.close()
