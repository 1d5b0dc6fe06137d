"""Routes of the `keys` area: the key inventory and rotation ceremonies (dual control).

IN PCI SCOPE. Never key material: attributes, states and counts only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request

from api.dependencies import AppState, Caller, CeremonyPath, State
from api.errors import ApiError
from api.mfa import require_officer_mfa
from api.models import CeremonyResponse, RotationRequest
from api.tls import peer_certificate
from policies.models import Action
from vault.approval_proof import SignedAction
from vault.ceremony import OfficerCertificate
from vault.errors import InvalidInput
from vault.rotation import KeyRotation

router = APIRouter()
# Every ceremony action carries the officer's second factor (PCI DSS 8.4.1): a signature
# by their own token key over the request (`api.mfa`). Reads do not.
_MFA = [require_officer_mfa(Action.KEY_ADMIN)]


def _mfa_keyid(request: Request) -> str | None:
    """The thumbprint of the MFA key that signed this request (`api.mfa`): a proposal or
    approval counts only while the policy still registers it (the ceremony review)."""
    keyid = request.scope.get("state", {}).get("mfa_keyid")
    return keyid if isinstance(keyid, str) else None


def _mfa_proof(request: Request) -> SignedAction | None:
    """The signed request itself (`api.mfa`), stored with the proposal or approval: the
    proof that the officer's token signed it, checked again when approvals are counted
    (`vault.approval_proof`)."""
    proof = request.scope.get("state", {}).get("mfa_proof")
    return proof if isinstance(proof, SignedAction) else None


def _kept_proof(request: Request, *, body: bool) -> SignedAction | None:
    """`_mfa_proof`, refused (422 ``invalid_request``) when it holds text of the officer's
    that no model reads: it is kept whole with the ceremony and as its audit entry's
    document, which the log cannot shred, and a card number written there stayed in the
    database in clear (session 36 review). No ceremony action takes a query string, an
    approval takes no body (`body` false), and a proposal's body names no member twice
    (JSON's last one wins: ``{"kind": CARD, "kind": "data"}`` validated as ``data``)."""
    proof = _mfa_proof(request)
    if proof is None:
        return None
    if proof.query:
        raise InvalidInput("a key ceremony action takes no query string")
    if not body and proof.body:
        raise InvalidInput("an approval takes no body")
    if body and _names_a_member_twice(proof.body):
        raise InvalidInput("the body names a member twice")
    return proof


def _names_a_member_twice(body: bytes) -> bool:
    """Whether JSON `body` has an object naming a member twice (or is not JSON at all)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({name for name, _ in items}) != len(items):
            raise ValueError("a member named twice")
        return dict(items)

    try:
        json.loads(body, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return True
    return False


def _certificate(request: Request) -> str | None:
    """The client certificate (PEM) this request came with, stored with a proposal or
    approval: while the CRL revokes it, the ceremony takes no approval."""
    return peer_certificate(request.scope)


def _revoked(request: Request) -> Callable[[str], bool]:
    """Whether the CRL in force now revokes a stored certificate (PEM)."""
    revokes: Callable[[str], bool] = request.app.state.revoked_certificates.revokes
    return revokes


def _rotation(state: AppState) -> KeyRotation:
    if state.rotation is None:
        raise ApiError("key administration is not enabled on this node")
    return state.rotation


@router.get("/v1/admin/keys", tags=["keys"])
def key_inventory(caller: Caller, state: State) -> dict[str, Any]:
    """Token keys and data keys, their attributes, states and how many records each
    still protects (security officers). Never key material."""
    return _rotation(state).inventory(caller.identity, caller.request_id)


@router.get("/v1/admin/keys/rotations", response_model=list[CeremonyResponse], tags=["keys"])
def list_rotations(caller: Caller, state: State, request: Request) -> list[CeremonyResponse]:
    # Counted with the CRL in force, as an approval would be (`_revoked`).
    return [
        CeremonyResponse.model_validate(c.as_json())
        for c in _rotation(state).list_ceremonies(
            caller.identity, _revoked(request), caller.request_id
        )
    ]


@router.post(
    "/v1/admin/keys/rotations",
    response_model=CeremonyResponse,
    status_code=201,
    tags=["keys"],
    dependencies=_MFA,
)
def propose_rotation(
    body: RotationRequest, caller: Caller, state: State, request: Request
) -> CeremonyResponse:
    """Propose a rotation (kek, data or fingerprint); it runs after other officers
    approve it (dual control, enforced here)."""
    ceremony = _rotation(state).propose(
        caller.identity,
        body.kind,
        caller.request_id,
        keyid=_mfa_keyid(request),
        proof=_kept_proof(request, body=True),
        certificate=_certificate(request),
    )
    return CeremonyResponse.model_validate(ceremony.as_json())


@router.get(
    "/v1/admin/keys/rotations/{ceremony_id}", response_model=CeremonyResponse, tags=["keys"]
)
def rotation_status(
    ceremony_id: CeremonyPath, caller: Caller, state: State, request: Request
) -> CeremonyResponse:
    return CeremonyResponse.model_validate(
        _rotation(state)
        .status(caller.identity, ceremony_id, _revoked(request), caller.request_id)
        .as_json()
    )


@router.post(
    "/v1/admin/keys/rotations/{ceremony_id}/approve",
    response_model=CeremonyResponse,
    tags=["keys"],
    dependencies=_MFA,
)
def approve_rotation(
    ceremony_id: CeremonyPath, caller: Caller, state: State, request: Request
) -> CeremonyResponse:
    ceremony = _rotation(state).approve(
        caller.identity,
        ceremony_id,
        caller.request_id,
        keyid=_mfa_keyid(request),
        proof=_kept_proof(request, body=False),
        # Checked with the CRL in force now, as each request's own certificate is.
        certificate=OfficerCertificate(_certificate(request), _revoked(request)),
    )
    return CeremonyResponse.model_validate(ceremony.as_json())


@router.post(
    "/v1/admin/keys/rotations/{ceremony_id}/cancel",
    response_model=CeremonyResponse,
    tags=["keys"],
    dependencies=_MFA,
)
def cancel_rotation(ceremony_id: CeremonyPath, caller: Caller, state: State) -> CeremonyResponse:
    return CeremonyResponse.model_validate(
        _rotation(state).cancel(caller.identity, ceremony_id, caller.request_id).as_json()
    )
