"""Routes of the `health` area: liveness and readiness, for load balancers and probes.

IN PCI SCOPE (served on the same mutual-TLS listener as the rest of the API).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.health import ReadyProbes
from api.models import HealthResponse
from api.tls import peer_certificate

router = APIRouter()


@router.get("/healthz", response_model=HealthResponse, tags=["health"])
def healthz() -> HealthResponse:
    """The process is alive."""
    return HealthResponse(status="alive")


@router.get("/readyz", response_model=HealthResponse, tags=["health"])
async def readyz(request: Request) -> HealthResponse:
    """HSM session works, database reachable, audit sequencer alive, CRL (when
    configured) loaded and not expired."""
    # Metered per certificate and shared (`api.health.ReadyProbes`, review 29); waits
    # for a run on the event loop, not in a thread of the pool (review 29b).
    probes: ReadyProbes = request.app.state.ready_probes
    checks = await probes.answer(peer_certificate(request.scope))
    return HealthResponse(status="ready", checks=checks)
