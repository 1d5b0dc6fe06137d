"""Routes of the `audit` area: the signed tree head and the Merkle proofs of the audit
log (RFC 9162).

IN PCI SCOPE. Every read is itself audited (`VaultService.audit_read`) before it runs.
"""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from api.dependencies import Caller, State
from api.models import ConsistencyProofResponse, InclusionProofResponse, SignedHeadResponse
from api.problems import problem
from audit.errors import ProofError
from audit.merkle import leaf_hash

router = APIRouter()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@router.get("/v1/audit/head", response_model=SignedHeadResponse, tags=["audit"])
def audit_head(caller: Caller, state: State) -> SignedHeadResponse | Response:
    """The latest signed tree head of the audit log."""
    state.service.audit_read(caller, "head")
    head = state.audit.latest_head()
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
    state.service.audit_read(caller, "inclusion proof")
    try:
        tree_size = size if size is not None else state.audit.size()
        proof = state.audit.inclusion_proof(index, tree_size)
        entry = state.audit.entry(index)
    except ProofError as exc:
        return problem("not_found", str(exc), request_id=caller.request_id)
    return InclusionProofResponse(
        index=index,
        tree_size=tree_size,
        entry=entry,
        leaf_hash=_b64(leaf_hash(entry.encode())),
        proof=[_b64(p) for p in proof],
    )


@router.get("/v1/audit/proof/consistency", response_model=ConsistencyProofResponse, tags=["audit"])
def audit_consistency(
    caller: Caller,
    state: State,
    size1: Annotated[int, Query(ge=1, le=2**62)],
    size2: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> ConsistencyProofResponse | Response:
    """A consistency proof between two tree sizes."""
    state.service.audit_read(caller, "consistency proof")
    try:
        to = size2 if size2 is not None else state.audit.size()
        proof = state.audit.consistency_proof(size1, to)
    except ProofError as exc:
        return problem("not_found", str(exc), request_id=caller.request_id)
    return ConsistencyProofResponse(size1=size1, size2=to, proof=[_b64(p) for p in proof])
