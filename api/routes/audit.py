"""Routes of the `audit` area: the signed tree head and the Merkle proofs of the audit
log (RFC 9162).

IN PCI SCOPE. The log is read through the vault (`VaultService.audit_head`,
`audit_inclusion_proof`, `audit_consistency_proof`), which authorises and audits every
read before it runs; the API never opens the audit package itself.
"""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from api.dependencies import Caller, State
from api.models import ConsistencyProofResponse, InclusionProofResponse, SignedHeadResponse
from api.problems import problem
from vault.errors import AuditRecordNotFound

router = APIRouter()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@router.get("/v1/audit/head", response_model=SignedHeadResponse, tags=["audit"])
def audit_head(caller: Caller, state: State) -> SignedHeadResponse | Response:
    """The latest signed tree head of the audit log."""
    head = state.service.audit_head(caller)
    if head is None:
        return problem("not_found", "no signed tree head yet", request_id=caller.request_id)
    return SignedHeadResponse.model_validate(head.as_json())


@router.get("/v1/audit/proof/inclusion", response_model=InclusionProofResponse, tags=["audit"])
def audit_inclusion(
    caller: Caller,
    state: State,
    index: Annotated[int, Query(ge=0, le=2**62)],
    size: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> InclusionProofResponse | Response:
    """An inclusion proof of entry `index` in the tree of `size` entries."""
    try:
        found = state.service.audit_inclusion_proof(caller, index, size)
    except AuditRecordNotFound as exc:
        return problem("not_found", str(exc), request_id=caller.request_id)
    return InclusionProofResponse(
        index=found.index,
        tree_size=found.tree_size,
        entry=found.entry,
        leaf_hash=_b64(found.leaf_hash),
        proof=[_b64(p) for p in found.proof],
    )


@router.get("/v1/audit/proof/consistency", response_model=ConsistencyProofResponse, tags=["audit"])
def audit_consistency(
    caller: Caller,
    state: State,
    size1: Annotated[int, Query(ge=1, le=2**62)],
    size2: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> ConsistencyProofResponse | Response:
    """A consistency proof between two tree sizes."""
    try:
        found = state.service.audit_consistency_proof(caller, size1, size2)
    except AuditRecordNotFound as exc:
        return problem("not_found", str(exc), request_id=caller.request_id)
    return ConsistencyProofResponse(
        size1=found.size1, size2=found.size2, proof=[_b64(p) for p in found.proof]
    )
