"""The verifier's RFC 9421 subset (`cofre_evidence_verifier.request_signature`) against
the vault's own (`vault.httpsig`, `vault.approval_proof`): on the same stored ceremony
actions, genuine and altered field by field, both accept exactly the same ones, and
derive the same ceremony id. The verifier re-implements the check because it imports
nothing of the vault; this is what keeps the two from drifting apart."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cofre_evidence_verifier.errors import SignedRequestError
from cofre_evidence_verifier.request_signature import (
    SignedRequest,
    normalize_authority,
    verify_signed_request,
)
from tests.support.officers import new_software_officer, signed_approval, signed_proposal
from vault.approval_proof import SignedAction, approval_problem
from vault.errors import OfficerMfaError
from vault.httpsig import normalize_authority as vault_normalize_authority
from vault.httpsig import parse_signature, verify_request

ALICE = new_software_officer("officer-alice")
BOB = new_software_officer("officer-bob")
CEREMONY = "2b0f7e0c-0d3a-4c51-8f5e-9d1c6a7b8e90"


def _vault_accepts(action: SignedAction, pem: str) -> bool:
    request = action.request()
    try:
        verify_request(parse_signature(request.headers), request, pem.encode())
    except OfficerMfaError:
        return False
    return True


def _verifier_accepts(stored: str, pem: str) -> bool:
    try:
        verify_signed_request(SignedRequest.from_json(stored), pem)
    except SignedRequestError:
        return False
    return True


def _variants() -> list[tuple[str, SignedAction]]:
    proposal = signed_proposal(ALICE, "kek", authority="Vault.Example:443")
    approval = signed_approval(ALICE, CEREMONY, authority="10.0.0.7:8443")
    params = proposal.signature_input
    return [
        ("genuine proposal", proposal),
        ("genuine approval", approval),
        ("another body", dataclasses.replace(proposal, body=b'{"kind": "data"}')),
        ("another path", dataclasses.replace(approval, path="/v1/admin/keys/rotations/x/approve")),
        ("another method", dataclasses.replace(approval, method="PUT")),
        ("another host", dataclasses.replace(approval, authority="vault.staging.example")),
        ("a query", dataclasses.replace(approval, query="a=1")),
        ("created moved", dataclasses.replace(proposal, signature_input=params.replace(
            "created=", "created=1"))),
        ("another tag", dataclasses.replace(proposal, signature_input=params.replace(
            "cofre-officer-mfa", "cofre-officer-mfb"))),
        ("signature cut", dataclasses.replace(proposal, signature=proposal.signature[:-6] + ":")),
        ("labels differ", dataclasses.replace(
            proposal, signature="other" + proposal.signature[5:])),
        ("no digest", dataclasses.replace(proposal, content_digest="")),
        ("host not plain", dataclasses.replace(approval, authority="user@vault.example")),
    ]  # fmt: skip


@pytest.mark.parametrize(("name", "action"), _variants(), ids=[n for n, _ in _variants()])
def test_the_verifier_accepts_what_the_vault_accepts(name: str, action: SignedAction) -> None:
    stored = action.to_json()
    for pem in (ALICE.pem, BOB.pem):
        expected = _vault_accepts(action, pem)
        assert _verifier_accepts(stored, pem) is expected, (name, pem == ALICE.pem)
    assert _verifier_accepts(stored, ALICE.pem) is name.startswith("genuine")


def test_the_ceremony_id_and_the_authority_are_the_vault_s() -> None:
    proposal = signed_proposal(ALICE, "audit", authority="VAULT.example:443")
    request = SignedRequest.from_json(proposal.to_json())
    assert request.ceremony_id() == proposal.ceremony_id()
    assert request.proposed_kind() == "audit"
    signed = verify_signed_request(request, ALICE.pem)
    assert signed.authority == vault_normalize_authority("VAULT.example:443") == "vault.example"
    assert signed.created == parse_signature(proposal.request().headers).created
    for host in ("[::1]:8443", "10.0.0.7", "vault.example:8443"):
        assert normalize_authority(host) == vault_normalize_authority(host)
    approval = signed_approval(BOB, CEREMONY).to_json()
    assert approval_problem(approval, BOB.pem.encode(), CEREMONY) is None
    assert _verifier_accepts(approval, BOB.pem)


@pytest.mark.parametrize(
    "stored",
    ["", "[]", "not json", '{"method": "POST"}', "[" * 100_000,
     json.dumps({**json.loads(signed_approval(BOB, CEREMONY).to_json()), "body": "%%"}),
     json.dumps({**json.loads(signed_approval(BOB, CEREMONY).to_json()), "method": 1}),
     json.dumps({**json.loads(signed_approval(BOB, CEREMONY).to_json()), "extra": ""})],
)  # fmt: skip
def test_what_is_not_a_stored_request_is_refused_by_name(stored: str) -> None:
    with pytest.raises(SignedRequestError, match="not a stored signed request"):
        SignedRequest.from_json(stored)
