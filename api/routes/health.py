"""Routes of the `health` area: liveness and readiness, for load balancers and probes.

IN PCI SCOPE (served on the same mutual-TLS listener as the rest of the API).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.dependencies import State
from api.models import HealthResponse

router = APIRouter()


@router.get("/healthz", response_model=HealthResponse, tags=["health"])
def healthz() -> HealthResponse:
    """The process is alive."""
    return HealthResponse(status="alive")


@router.get("/readyz", response_model=HealthResponse, tags=["health"])
def readyz(request: Request, state: State) -> HealthResponse:
    """HSM session works, database reachable, audit sequencer alive, CRL (when
    configured) loaded and not expired."""
    checks = state.check_ready()
    # Checks added after the app was built (`api.app.add_ready_check`).
    for name, check in request.app.state.ready_checks:
        check()
        checks[name] = "ok"
    return HealthResponse(status="ready", checks=checks)
