"""Routes of the evidence area: signed PCI DSS evidence bundles (tagged `audit` in the
OpenAPI document).

IN PCI SCOPE. A bundle holds no PAN; an auditor verifies it offline.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import IO, Final

from fastapi import APIRouter
from starlette.responses import Response, StreamingResponse

from api.dependencies import Caller, State
from api.errors import ApiError
from api.mfa import require_officer_mfa
from api.models import EvidenceRequest
from policies.models import Action

router = APIRouter()

CHUNK: Final = 64 * 1024


def _chunks(bundle: IO[bytes]) -> Iterator[bytes]:
    """The bundle file in chunks; closing it (also when the client goes away and the
    generator is discarded) deletes the anonymous temporary file."""
    with bundle:
        while chunk := bundle.read(CHUNK):
            yield chunk


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
    # Written whole (and its export audited) before the first byte is sent: a client
    # gets a complete bundle or an error, never a truncated archive with a 200.
    size = os.fstat(bundle.fileno()).st_size
    return StreamingResponse(
        _chunks(bundle),
        media_type="application/gzip",
        headers={
            "content-disposition": 'attachment; filename="cofre-evidence.tar.gz"',
            "content-length": str(size),
        },
    )
