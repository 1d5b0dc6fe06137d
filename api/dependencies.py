"""What a route needs from the app: its `AppState` and the caller of the request.

IN PCI SCOPE. The state lives on the application (`app.state.cofre`, set by
`api.app.create_app`), not in a module, so two apps in one process never share it. The
caller's identity comes from the verified client certificate in the ASGI ``tls``
extension (`api.tls`), never from a header.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Annotated, cast

from fastapi import Depends, Path, Request
from pydantic import AfterValidator

from api._refusal_sieve import DEFAULT_ALLOWANCES, RefusalAllowances
from api.models import NAME_CHARS, NO_CONTROL, EvidenceRequest, no_card
from api.observability import Telemetry
from api.routes._offload import Turns
from api.tls import identity_from_scope, source_from_scope
from vault.custody import Custody
from vault.officer_mfa import OfficerMfa
from vault.rotation import KeyRotation
from vault.service import CallContext, VaultService


@dataclass
class AppState:
    """Everything the app uses. `check_ready` returns check name -> "ok" or raises the
    `CofreError` of the first failing check."""

    service: VaultService
    check_ready: Callable[[], dict[str, str]]
    telemetry: Telemetry
    rotation: KeyRotation | None = None
    # Returns the bundle as an open (anonymous, temporary) file the route streams and
    # closes: a bundle is never held in memory.
    evidence: Callable[[CallContext, EvidenceRequest], IO[bytes]] | None = None
    # /docs and /openapi.json (`cofre dev`; off in `cofre serve` unless configured).
    api_docs: bool = False
    # Hosted capture: the capture listener's origin (told to session creators) and the
    # development setting that lets a session name an http://localhost origin.
    capture_origin: str | None = None
    capture_allow_http_localhost: bool = False
    # Checks the officers' second factor (`api.mfa`); None refuses what needs it.
    officer_mfa: OfficerMfa | None = None
    # Key custodians' signed acknowledgements (`api.routes.custody`).
    custody: Custody | None = None
    # The allowances of refusal entries of a service without a rate limit
    # (``COFRE_AUDIT__REFUSAL_ENTRIES_*``, `api._refusal_sieve`).
    refusal_allowances: RefusalAllowances = DEFAULT_ALLOWANCES
    # Each identity's turn for its lookups, waited for on the event loop (`Turns`).
    lookup_turns: Turns = field(default_factory=Turns)


def app_state(request: Request) -> AppState:
    """The `AppState` the app serving `request` was created with."""
    return cast(AppState, request.app.state.cofre)


def request_id(request: Request) -> str:
    """The request id the guard (`api.guard`) gave `request`; "" before it ran."""
    return str(request.scope.get("state", {}).get("request_id", ""))


def call_context(request: Request) -> CallContext:
    """The caller: identity and source (address, certificate) from the TLS connection,
    request id from the guard."""
    state = request.scope.setdefault("state", {})
    identity = state.get("identity") or identity_from_scope(request.scope)
    state["identity"] = identity
    return CallContext(
        identity=identity,
        request_id=request_id(request),
        source=source_from_scope(request.scope),
    )


# The dependencies are `async def` though they never await: FastAPI runs a plain `def`
# dependency in the thread pool, a hop to a thread and back per dependency per request
# (issue 21's profile: each hop waits for a thread and the GIL on a busy node).
async def _app_state(request: Request) -> AppState:
    return app_state(request)


async def _call_context(request: Request) -> CallContext:
    return call_context(request)


State = Annotated[AppState, Depends(_app_state)]
Caller = Annotated[CallContext, Depends(_call_context)]
TokenPath = Annotated[str, Path(min_length=1, max_length=64, pattern=NO_CONTROL)]
# A relay route's name goes to the audit entry and the problem detail as sent.
RoutePath = Annotated[
    str, Path(min_length=1, max_length=64, pattern=NAME_CHARS), AfterValidator(no_card)
]
CeremonyPath = Annotated[str, Path(min_length=1, max_length=64, pattern=NO_CONTROL)]
