"""Review appr: dual control must not rest on the database's integrity. An operator who
holds the HSM PIN and can write the database added a second officer's approval (or
proposal) row by hand, and a rotation ran with fewer real officers than the policy
requires. Each proposal and approval now stores the request its officer's token signed,
and approvals are counted only while those verify under the officers' registered MFA
keys and name this ceremony (`vault.approval_proof`): a hand-written row, a forged
signature, or a genuine one copied from another ceremony does not count, and the refusal
is audited with why."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from api.pki import issue_client
from tests.api.conftest import VaultServer
from tests.support.custody import acknowledge_custody
from tests.support.officers import (
    SigningOfficer,
    new_software_officer,
    signed_approval,
    signed_proposal,
    software_officers,
)
from vault.storage.schema import key_approvals, key_ceremonies

ROTATIONS = "/v1/admin/keys/rotations"
ALICE, BOB, CAROL = (f"spiffe://cofre/officer-{n}" for n in ("alice", "bob", "carol"))


@pytest.fixture
def three_officers(vault_server: VaultServer) -> Iterator[SigningOfficer]:
    """Carol as a third officer, and three officers required (two approvals)."""
    with third_officer(vault_server) as carol:
        yield carol


@contextmanager
def third_officer(vault_server: VaultServer) -> Iterator[SigningOfficer]:
    """Carol as a third officer of `vault_server`, and three officers required (two
    approvals), until the block ends: then its pending ceremonies are cancelled and its
    policy is restored."""
    runtime = vault_server.runtime
    policy_file = runtime.settings.policy_file
    assert policy_file is not None
    original = policy_file.read_text()
    carol = new_software_officer("officer-carol")
    issue_client(vault_server.pki, "officer-carol")
    policy_file.write_text(
        "key_approvals_required = 3\n"
        + original
        + '\n[identities."spiffe://cofre/officer-carol"]\nrole = "security_officer"\n'
        + f'operations = ["key_admin"]\nmfa_public_key = """\n{carol.pem.strip()}\n"""\n'
    )
    assert runtime.reload_policy()
    with vault_server.client("officer-carol", signed=False) as client:
        client.auth = carol.auth()
        acknowledge_custody(client, carol)  # as every officer must (PCI DSS 3.7.8)
    try:
        yield carol
    finally:
        with vault_server.client("officer-bob") as bob:
            for ceremony in bob.get(ROTATIONS).json():
                if ceremony["state"] == "pending":
                    bob.post(f"{ROTATIONS}/{ceremony['id']}/cancel")
        policy_file.write_text(original)
        assert runtime.reload_policy()


def _carol(vault_server: VaultServer, carol: SigningOfficer) -> httpx.Client:
    client = vault_server.client("officer-carol", signed=False)
    client.auth = carol.auth()
    return client


def _propose(vault_server: VaultServer, kind: str) -> str:
    with vault_server.client("officer-alice") as alice:
        proposed = alice.post(ROTATIONS, json={"kind": kind})
    assert proposed.status_code == 201, proposed.text
    return str(proposed.json()["id"])


def _write_approval(vault_server: VaultServer, ceremony: str, officer: str, **row: Any) -> None:
    """What the operator does: an approval row written straight into the database."""
    with vault_server.runtime.engine.begin() as connection:
        connection.execute(
            sa.insert(key_approvals).values(
                ceremony_id=ceremony, officer=officer, approved_at=datetime.now(UTC), **row
            )
        )


def _denials(vault_server: VaultServer, ceremony: str) -> list[str]:
    with vault_server.runtime.engine.connect() as connection:
        payloads = [
            json.loads(p)
            for p in connection.execute(
                sa.text("SELECT payload FROM audit_entries WHERE payload LIKE :p"),
                {"p": '%"outcome":"denied"%'},
            ).scalars()
        ]
    return [
        e["details"]["reason"]
        for e in payloads
        if e["action"] == "key.rotation.approve" and e["key_id"] == ceremony
    ]


def _refused(vault_server: VaultServer, client: httpx.Client, ceremony: str) -> str:
    """Approve `ceremony` with `client`: refused, the ceremony still pending, the refusal
    audited. Returns the refusal's message."""
    approved = client.post(f"{ROTATIONS}/{ceremony}/approve")
    state = client.get(f"{ROTATIONS}/{ceremony}").json()["state"]
    assert (approved.status_code, state) == (409, "pending"), approved.text
    assert approved.json()["code"] == "ceremony_invalid"
    assert any("officer-bob" in reason for reason in _denials(vault_server, ceremony))
    return str(approved.json()["detail"])


def _bob() -> SigningOfficer:
    return software_officers()["officer-bob"]


@pytest.mark.parametrize("keyid", ["none", "bob's"])
def test_an_approval_written_into_the_database_does_not_count(
    vault_server: VaultServer, three_officers: SigningOfficer, keyid: str
) -> None:
    """Alice proposes and Carol approves for real; Bob's approval is a row the operator
    wrote (no key id, or Bob's key id, which is public). Two real officers of three."""
    ceremony = _propose(vault_server, "fingerprint")
    _write_approval(vault_server, ceremony, BOB, keyid=None if keyid == "none" else _bob().keyid)
    with _carol(vault_server, three_officers) as carol:
        # The officers' view lists the row, and does not count it.
        shown = carol.get(f"{ROTATIONS}/{ceremony}").json()
        assert (shown["approvers"], shown["approvals_counting"]) == ([BOB], [])
        detail = _refused(vault_server, carol, ceremony)
    assert "no signature by the officer's token" in detail


def test_a_forged_signature_does_not_count(
    vault_server: VaultServer, three_officers: SigningOfficer
) -> None:
    """The operator signs Bob's approval of this ceremony with a key of their own."""
    ceremony = _propose(vault_server, "fingerprint")
    forger = new_software_officer("officer-bob")
    forged = signed_approval(
        SigningOfficer(forger.name, forger.pem, _bob().keyid, forger.sign), ceremony
    )
    _write_approval(vault_server, ceremony, BOB, keyid=_bob().keyid, proof=forged.to_json())
    with _carol(vault_server, three_officers) as carol:
        detail = _refused(vault_server, carol, ceremony)
    assert "does not verify under the registered MFA key" in detail


def test_a_genuine_approval_copied_from_another_ceremony_does_not_count(
    vault_server: VaultServer, three_officers: SigningOfficer
) -> None:
    """Bob really approved ceremony X; the operator copies his row, proof and all, to Y."""
    other = _propose(vault_server, "kek")
    with vault_server.client("officer-bob") as bob:
        approved = bob.post(f"{ROTATIONS}/{other}/approve")
    assert approved.status_code == 200, approved.text
    assert approved.json()["approvals_counting"] == [BOB]  # a genuine approval counts
    with vault_server.runtime.engine.connect() as connection:
        genuine = connection.execute(
            sa.select(key_approvals.c.keyid, key_approvals.c.proof).where(
                key_approvals.c.ceremony_id == other, key_approvals.c.officer == BOB
            )
        ).one()
    ceremony = _propose(vault_server, "fingerprint")
    _write_approval(vault_server, ceremony, BOB, keyid=genuine.keyid, proof=genuine.proof)
    with _carol(vault_server, three_officers) as carol:
        detail = _refused(vault_server, carol, ceremony)
    assert f"{other}/approve, not this ceremony's approval" in detail


def test_a_proposers_own_approval_row_does_not_count(
    vault_server: VaultServer, three_officers: SigningOfficer
) -> None:
    """The vault refuses the proposer's approval; a row for it does not count either."""
    ceremony = _propose(vault_server, "fingerprint")
    _write_approval(vault_server, ceremony, ALICE)
    with _carol(vault_server, three_officers) as carol:
        approved = carol.post(f"{ROTATIONS}/{ceremony}/approve")
    assert approved.status_code == 200, approved.text
    assert approved.json()["state"] == "pending"


@contextmanager
def _written_proposal(vault_server: VaultServer, ceremony: str, **row: Any) -> Iterator[None]:
    """What the operator does: a fingerprint rotation proposed by Bob, written straight
    into the database (cancelled after the test, so that later ones may propose)."""
    now = datetime.now(UTC)
    with vault_server.runtime.engine.begin() as connection:
        connection.execute(
            sa.insert(key_ceremonies).values(
                id=ceremony,
                kind="fingerprint",
                state="pending",
                proposer=BOB,
                proposer_keyid=_bob().keyid,
                created_at=now,
                expires_at=now.replace(year=now.year + 1),
                **row,
            )
        )
    try:
        yield
    finally:
        with vault_server.client("officer-alice") as alice:
            alice.post(f"{ROTATIONS}/{ceremony}/cancel")


@contextmanager
def bobs_proposal_written(
    vault_server: VaultServer, **signed: Any
) -> Iterator[tuple[str, httpx.Client]]:
    """Bob's genuine fingerprint proposal, signed with `signed` (`signed_proposal`'s
    keywords: another vault's authority, a `created` in the past or to come), written
    in by the operator; yields its ceremony id and Alice's client."""
    proposal = signed_proposal(_bob(), "fingerprint", **signed)
    ceremony = proposal.ceremony_id()
    with (
        _written_proposal(vault_server, ceremony, proposer_proof=proposal.to_json()),
        vault_server.client("officer-alice") as alice,
    ):
        yield ceremony, alice


def test_a_proposal_written_into_the_database_does_not_count(vault_server: VaultServer) -> None:
    """Two officers required: the operator writes a proposal by Bob, Alice approves it."""
    ceremony = "6f1c2a51-5d0e-4f6b-9a51-3f4f0d7a2c11"
    with (
        _written_proposal(vault_server, ceremony),
        vault_server.client("officer-alice") as alice,
    ):
        detail = _refused(vault_server, alice, ceremony)
    assert "the proposal by spiffe://cofre/officer-bob" in detail


def test_a_ceremony_copied_from_a_staging_vault_does_not_count(vault_server: VaultServer) -> None:
    """Bob really proposed a rotation on a staging vault where the same officers' keys are
    registered; the operator copies that ceremony's row, proof and all, into this one's
    database, and Alice approves it here."""
    staging = "vault.staging.example"
    with bobs_proposal_written(vault_server, authority=staging) as (ceremony, alice):
        detail = _refused(vault_server, alice, ceremony)
    assert "signed for vault.staging.example, not this vault" in detail


def test_a_past_ceremony_replayed_does_not_count(vault_server: VaultServer) -> None:
    """Bob really proposed a rotation here two days ago; it expired (or ran). The
    operator writes it back as pending with a fresh expiry, his genuine proof and all, and
    asks Alice to approve: her approval and Bob's old proposal would make two officers
    where only one acts today. A proposal counts only within its life from when its
    officer's token signed it (the signed ``created``, which the database cannot move):
    the officers see it expired (review 26: it showed pending), and approving is refused."""
    two_days_ago = int(datetime.now(UTC).timestamp()) - 2 * 86_400
    with bobs_proposal_written(vault_server, created=two_days_ago) as (ceremony, alice):
        assert alice.get(f"{ROTATIONS}/{ceremony}").json()["state"] == "expired"
        approved = alice.post(f"{ROTATIONS}/{ceremony}/approve")
        state = alice.get(f"{ROTATIONS}/{ceremony}").json()["state"]
    assert (approved.status_code, approved.json()["code"], state) == (
        409,
        "ceremony_invalid",
        "expired",
    ), approved.text


def test_approving_a_replayed_ceremony_is_recorded_as_a_denial(vault_server: VaultServer) -> None:
    """The replay above is refused before anything is counted, and the refusal was an
    error only: the log held no `key.rotation.approve` denial, so the one trace of an
    operator's replay (an officer asked to approve a ceremony the vault shows expired)
    never reached the evidence. A refused approval of a ceremony that is not pending is
    an access attempt refused (PCI DSS 10.2.1.4) and is recorded with its reason."""
    two_days_ago = int(datetime.now(UTC).timestamp()) - 2 * 86_400
    with bobs_proposal_written(vault_server, created=two_days_ago) as (ceremony, alice):
        approved = alice.post(f"{ROTATIONS}/{ceremony}/approve")
    assert approved.status_code == 409, approved.text
    assert _denials(vault_server, ceremony) == ["the ceremony is expired"]
