"""Routes of the `relay` area: calls to allow-listed upstreams with PANs put back inside
the vault.

IN PCI SCOPE. The PANs live only between the vault and the upstream; the caller sends
and receives tokens (or masked PANs).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import JSONResponse

from api.dependencies import Caller, RoutePath, State
from api.routes._offload import kept

router = APIRouter()


@router.post(
    "/v1/relay/{route}",
    tags=["relay"],
)
async def relay(
    route: RoutePath, body: dict[str, Any], caller: Caller, state: State
) -> JSONResponse:
    """Send `body` to an allow-listed upstream (the policy's relay route): the tokens
    at the route's places are replaced by PANs inside the vault; the upstream's answer
    comes back with its status, PANs in it tokenized or masked. The call finishes
    even if a shutdown cancels the request (`api.routes._offload.kept`)."""
    result = await kept(state.service.relay, caller, route, body)
    return JSONResponse(result.body, status_code=result.status)
