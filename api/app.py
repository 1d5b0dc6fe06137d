"""The FastAPI application factory: the routers (`api.routes`), problem+json errors
(`api.exception_handlers`), request ids, limits, logs, traces and metrics (`api.guard`).

IN PCI SCOPE. `create_app` holds no module-level state: everything the app needs comes
in an `AppState` (`api.dependencies`), kept on the app. The caller's identity comes from
the verified client certificate in the ASGI ``tls`` extension (`api.tls`), never from a
header.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, cast

from fastapi import FastAPI

from api._refusal_sieve import unmetered_limiter
from api.crl import RevokedCertificates
from api.dependencies import AppState
from api.exception_handlers import add_exception_handlers
from api.guard import RequestGuard
from api.health import ReadyProbes
from api.hotroutes import HotRoutes
from api.models import Problem
from api.observability import make_telemetry
from api.problems import PROBLEM_JSON
from api.refusals import DEFAULT_REFUSALS, PERSON_REQUESTS, RefusalFlusher, RefusalLimiter
from api.routes import (
    audit,
    capture_sessions,
    custody,
    evidence,
    health,
    keys,
    relay,
    tokens,
)
from cofre import __version__
from policies.errors import PolicyDenied
from policies.models import RateLimit, Role
from vault.service import VaultService

_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    status: {"model": Problem, "content": {PROBLEM_JSON: {}}}
    for status in (400, 401, 403, 404, 409, 410, 413, 415, 422, 429, 502, 503, 504)
}


def create_app(state: AppState) -> FastAPI:
    """Return the vault API for `state`."""
    app = FastAPI(
        title="Cofre vault API",
        version=__version__,
        description=(
            "PCI-DSS tokenization vault. Every call is made over mutual TLS; the caller's "
            "identity is the URI SAN of its client certificate. Errors are RFC 9457 "
            "problem+json with a stable `code`."
        ),
        responses=_ERRORS,
        # A trailing slash answered 307 with a Location built from the Host header.
        redirect_slashes=False,
        # The schema tells every identity the whole API surface: on only in `cofre dev`.
        docs_url="/docs" if state.api_docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if state.api_docs else None,
        # FastAPI's own OpenTelemetry bridge would trace raw paths through any global
        # provider; the request guard records route templates only (and checking
        # whether the bridge is on cost every request a little).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # Routes reach it through `api.dependencies.State`.
    app.state.cofre = state
    app.state.ready_checks = []
    # The mTLS `/readyz`'s runs of the checks, metered per certificate (review 29).
    app.state.ready_probes = ReadyProbes(lambda: _ready_checks(app, state))
    add_exception_handlers(app)
    # The order of the routers is the order of the paths in the OpenAPI document.
    for area in (tokens, capture_sessions, relay, keys, custody, evidence, audit, health):
        app.include_router(area.router)

    # The OpenAPI stub has no service: no audit there.
    recorder = getattr(state.service, "record", None)
    # Filled by the server's `api.crl.CrlWatcher` when a CRL is configured.
    app.state.revoked_certificates = revoked = RevokedCertificates()
    # Each caller's refused requests, limited and counted (`api.refusals`); the counts
    # written by a `refusal_flusher`.
    # The callers it leaves unlimited have an allowance of refusal entries, past which
    # those are counted too (`api._refusal_sieve`, session 39).
    refusals = unmetered = None
    if recorder is not None:
        refusals = RefusalLimiter(
            lambda key: _refusal_limit(state.service, key),
            recorder,
            every_request=lambda key: _is_person(state.service, key),
        )
        unmetered = unmetered_limiter(refusals, recorder, allowances=state.refusal_allowances)
    app.state.refusal_limiters = [] if refusals is None else [refusals, unmetered]
    # Inside the guard: the hot routes past FastAPI's routing (`api.hotroutes`).
    app.add_middleware(HotRoutes, fastapi=app, routes=tokens.router.routes)
    app.add_middleware(
        RequestGuard,
        telemetry=state.telemetry,
        recorder=recorder,
        revoked=revoked,
        refusals=refusals,
        unmetered=unmetered,
    )
    return app


def refusal_flusher(*apps: FastAPI | None) -> RefusalFlusher:
    """The writer (not started) of the refusal counts of `apps`: the API's and the
    capture listener's (`api.refusals`)."""
    return RefusalFlusher(
        limiter
        for app in apps
        if app is not None
        for limiter in getattr(app.state, "refusal_limiters", [])
    )


def _refusal_limit(service: VaultService, key: str) -> RateLimit | None:
    """The refusal limit of the caller `key` (`api.refusals`): an identity's rate limit;
    without one, `PERSON_REQUESTS` for a person (officer, auditor) and none for a
    service the policy leaves unlimited; `DEFAULT_REFUSALS` for a caller the policy
    does not know (an identity it lacks, a certificate without one)."""
    try:
        rules = service.policy.rules_for(key)
    except PolicyDenied:
        return DEFAULT_REFUSALS
    if rules.rate_limit is not None:
        return rules.rate_limit
    return None if rules.role is Role.SERVICE else PERSON_REQUESTS


def _is_person(service: VaultService, key: str) -> bool:
    """Whether every request of the caller `key` spends its bucket (`api.refusals`):
    an officer's or auditor's identity."""
    try:
        return service.policy.rules_for(key).role is not Role.SERVICE
    except PolicyDenied:
        return False


def _ready_checks(app: FastAPI, state: AppState) -> dict[str, str]:
    """Every readiness check of `app`: check name -> "ok" (or a note); raises the
    `CofreError` of the first failing one."""
    checks = state.check_ready()
    # Checks added after the app was built (`add_ready_check`).
    for name, check in app.state.ready_checks:
        check()
        checks[name] = "ok"
    return checks


def add_ready_check(app: FastAPI, name: str, check: Callable[[], None]) -> None:
    """Make `/readyz` also run `check` (which raises a `CofreError` when not ready)."""
    app.state.ready_checks.append((name, check))


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI document, without a running vault (docs/openapi.json holds it;
    a test keeps the two equal)."""
    stub = AppState(
        service=cast(VaultService, None),
        check_ready=dict,
        telemetry=make_telemetry(),
    )
    return create_app(stub).openapi()
