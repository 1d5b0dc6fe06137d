"""Routes of the evidence area: signed PCI DSS evidence bundles (tagged `audit` in the
OpenAPI document).

IN PCI SCOPE. A bundle holds no PAN; an auditor verifies it offline.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from api.dependencies import Caller, State
from api.errors import ApiError
from api.mfa import require_officer_mfa
from api.models import EvidenceRequest
from policies.models import Action

router = APIRouter()


@router.post(
    "/v1/evidence",
    tags=["audit"],
    responses={
        200: {
            "content": {"application/gzip": {}},
            "description": "the signed evidence bundle (tar.gz)",
        }
    },
    # The exporter's second factor (PCI DSS 8.4.1): a signature by their token key.
    dependencies=[require_officer_mfa(Action.EVIDENCE_EXPORT)],
)
def export_evidence(body: EvidenceRequest, caller: Caller, state: State) -> Response:
    """A signed PCI DSS evidence bundle for a period (security officers, auditors);
    verify it offline with `cofre evidence verify`."""
    if state.evidence is None:
        raise ApiError("evidence export is not enabled on this node")
    bundle = state.evidence(caller, body)
    return Response(
        bundle,
        media_type="application/gzip",
        headers={"content-disposition": 'attachment; filename="cofre-evidence.tar.gz"'},
    )
