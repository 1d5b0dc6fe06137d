"""`vault._ceremony_guards.revoked_officers`: which of a ceremony's proposer and counted
approvers acted with a certificate the CRL now revokes (an approver's as well as the
proposer's; a stored certificate that cannot be read refuses too, fail closed; a NULL
one, from before migration 0020, is not checked), and the officers' view of a ceremony
that counts none of its approvals while one of them is revoked."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, create_engine, insert, select

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.custody import acknowledge_in_process
from tests.support.officers import new_software_officer, signed_approval, signed_proposal
from tests.vault.conftest import ALICE, BOB, CAROL, OFFICERS, TEST_POLICY, rotation_of
from vault._ceremony_guards import revoked_officers
from vault.ceremony import OfficerCertificate
from vault.httpsig import jwk_thumbprint
from vault.service import VaultService
from vault.storage.schema import key_approvals, key_ceremonies, metadata

REVOKED, GOOD, UNREADABLE = "pem-revoked", "pem-good", "pem-unreadable"


def _revoked(pem: str) -> bool:
    if pem == UNREADABLE:
        raise ValueError("not a certificate")
    return pem == REVOKED


@pytest.mark.parametrize(
    ("proposer", "approvers", "found"),
    [
        (GOOD, {"bob": GOOD, "carol": None}, []),
        (REVOKED, {"bob": GOOD}, ["the proposer alice's certificate is revoked"]),
        (GOOD, {"bob": REVOKED, "carol": GOOD}, ["the approver bob's certificate is revoked"]),
        (
            None,
            {"bob": UNREADABLE},
            ["the certificate stored for the approver bob is not readable"],
        ),
    ],
)
def test_revoked_officers(
    proposer: str | None, approvers: dict[str, str | None], found: list[str]
) -> None:
    engine = create_engine("sqlite://")
    metadata.create_all(engine, tables=[key_ceremonies, key_approvals])
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(
            insert(key_ceremonies).values(
                id="c1", kind="data", state="pending", proposer="alice", created_at=now,
                expires_at=now, proposer_certificate=proposer,
            )
        )  # fmt: skip
        for officer, pem in approvers.items():
            connection.execute(
                insert(key_approvals).values(
                    ceremony_id="c1", officer=officer, approved_at=now, certificate=pem
                )
            )
        row = connection.execute(select(key_ceremonies)).one()
        assert revoked_officers(connection, row, sorted(approvers), _revoked) == found


def test_the_view_counts_no_approval_while_an_approver_is_revoked(
    engine: Engine, rotation_provider: HSMProvider
) -> None:
    """`KeyRotation.status` and `list_ceremonies` with the CRL in force: Bob's approval
    counts until his certificate is revoked, and then none does (the ceremony takes no
    approval); without a CRL to ask (evidence bundles' `ceremonies()`), as before."""
    officers = {i: new_software_officer(i.rpartition("/")[2]) for i in (ALICE, BOB, CAROL)}
    text = "key_approvals_required = 3\n" + TEST_POLICY + OFFICERS
    for identity, officer in officers.items():
        head = f'[identities."{identity}"]\n'
        text = text.replace(head, f'{head}mfa_public_key = """{officer.pem}"""\n')
    policy = PolicyEngine(parse_policy(text, kind="toml").policy)
    service = VaultService(engine, rotation_provider, policy)
    service.initialize()
    acknowledge_in_process(engine, service, policy, officers)
    try:
        rotation = rotation_of(service, engine, rotation_provider)
        rotation._policy = lambda: policy
        thumb = {i: jwk_thumbprint(o.pem.encode()) for i, o in officers.items()}
        ceremony = rotation.propose(
            ALICE,
            "data",
            keyid=thumb[ALICE],
            proof=signed_proposal(officers[ALICE], "data"),
            certificate=GOOD,
        )
        rotation.approve(
            BOB,
            ceremony.id,
            keyid=thumb[BOB],
            proof=signed_approval(officers[BOB], ceremony.id),
            certificate=OfficerCertificate(REVOKED, lambda _pem: False),
        )
        assert rotation.status(CAROL, ceremony.id, _revoked).approvals_counting == []
        assert [c.approvals_counting for c in rotation.list_ceremonies(CAROL, _revoked)] == [[]]
        assert rotation.status(CAROL, ceremony.id, lambda _pem: False).approvals_counting == [BOB]
        assert rotation.status(CAROL, ceremony.id).approvals_counting == [BOB]
        assert [c.approvals_counting for c in rotation.ceremonies()] == [[BOB]]
    finally:
        service.close()
