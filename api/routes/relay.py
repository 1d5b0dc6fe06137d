"""Routes of the `relay` area: calls to allow-listed upstreams with PANs put back inside
the vault.

IN PCI SCOPE. The PANs live only between the vault and the upstream; the caller sends
and receives tokens (or masked PANs).
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter
from starlette.responses import JSONResponse, Response

from api.dependencies import Caller, RoutePath, State
from api.routes._offload import kept

router = APIRouter()

# Statuses HTTP gives no body (RFC 9110 15.3.5, 15.3.6, 15.4.5). Relayed with the
# masked answer as their body, uvicorn failed the response midway (review 34).
_BODILESS: Final = frozenset({204, 205, 304})


@router.post(
    "/v1/relay/{route}",
    tags=["relay"],
)
async def relay(route: RoutePath, body: dict[str, Any], caller: Caller, state: State) -> Response:
    """Send `body` to an allow-listed upstream (the policy's relay route): the tokens
    at the route's places are replaced by PANs inside the vault; the upstream's answer
    comes back with its status, PANs in it tokenized or masked. The call finishes
    even if a shutdown cancels the request (`api.routes._offload.kept`)."""
    result = await kept(state.service.relay, caller, route, body)
    if result.status in _BODILESS:
        return Response(status_code=result.status)
    return JSONResponse(result.body, status_code=result.status)
