"""The capture listener: hosted card fields for browsers and apps, on a port of its own.

IN PCI SCOPE, receives card data. Server TLS only: a browser cannot present a client
certificate, so a capture is authorised by its session (`vault.capture`): the session
id in the path, the client secret in the body, the origin it is bound to. Served here:

- ``GET /v1/capture.js``: the small script a shop's page loads (with the Subresource
  Integrity hash in docs/capture.md) to mount the fields and receive the token by
  ``postMessage``; the shop's page never reads the card;
- ``GET /v1/hosted-fields/{session}``: the card inputs, framed only by the session's
  origin (CSP ``frame-ancestors``), with their script and style beside them (no inline
  script or style, no eval: ``script-src 'self'``);
- ``POST /v1/capture/{session}``: the card (number, expiry, security code, optional
  name) and the secret; the answer is the token, the masked number and the expiry.
  CORS answers only the session's origin; the fields post from this listener's own
  origin.

Every response carries a strict CSP and no-store caching; error bodies are problem+json
with a stable `code` and never echo what was sent (validation errors name the field
and the rule only). Rate limits per session and per client address live in the
database (`vault.limits`), so every node shares them.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, TypedDict

import structlog
from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from api._capture_assets import _hosted_fields_page, asset, asset_version, sri_hash
from api._capture_body import closing, limited
from api._capture_framing import reject_early
from api._capture_headers import BASE_CSP, cors_headers, readable_by, security_headers
from api._capture_server import build_capture_server
from api._capture_slots import CaptureSlots
from api.guard import problem_for
from api.observability import method_name
from api.problems import problem
from api.problems import retry_after as retry_after_value
from api.refusals import NOTHING_HELD, RefusalLimiter, Spent, charged
from cofre.errors import CofreError
from cofre.origins import address_key
from policies.models import RateLimit
from vault.capture import (
    SESSION_ID_LENGTH,
    CardCapture,
    is_session_id,
    refusal_origin,
)
from vault.operations.capture import ANONYMOUS_CAPTURE
from vault.pan import Pan
from vault.service import AuditEvent, DetailValue, Outcome, Source, VaultService, request_trail

__all__ = [
    "CAPTURE_SCRIPT",
    "CaptureAnswer",
    "CaptureState",
    "CardBody",
    "asset",
    "build_capture_server",
    "create_capture_app",
    "sri_hash",
]

_log = structlog.get_logger("cofre.capture")
CAPTURE_SCRIPT: Final = "capture.js"
MAX_BODY: Final = 4096
# Refusal entries of the whole listener (every address) written one by one before the
# rest are counted (`api.refusals`): shoppers' mistakes come a few a second at most.
# The default of `CaptureState.listener_refusals` (`COFRE_CAPTURE__LISTENER_REFUSAL_
# ENTRIES_*`, session 42).
LISTENER_REFUSALS: Final = RateLimit(per_second=20.0, burst=200)
LISTENER_KEY: Final = "*"
_HELD_BACK: Final = "too many refused requests, or requests in flight, from this address"
_ASSET_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
SessionPath = Annotated[str, Path(min_length=1, max_length=SESSION_ID_LENGTH + 8)]


@dataclass
class CaptureState:
    """What the capture listener uses: the vault, its own public origin (where the
    hosted fields live), the rate limits, whether http loopback origins are allowed
    and the listener's share of the database pool (`api._capture_slots`)."""

    service: VaultService
    public_origin: str
    per_session: RateLimit
    per_address: RateLimit
    # The development setting as it is now (not as it was when a session opened): a
    # session's http://localhost origin is refused once a restart turned it off.
    allow_http_localhost: bool = False
    slots: CaptureSlots = field(default_factory=lambda: CaptureSlots(10))  # pool_size's
    # The whole listener's refusal entries (`LISTENER_REFUSALS` when None).
    listener_refusals: RateLimit | None = None


class CardBody(BaseModel):
    """The card the hosted fields post, with the session's secret. Never logged, never
    echoed: a validation error names only the field and the rule."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    secret: Annotated[str | None, Field(max_length=128)] = None
    number: Annotated[str, Field(min_length=1, max_length=32)]
    # MM/YY or YYYY-MM: the vault checks it (invalid_expiry, card_expired).
    expiry: Annotated[str | None, Field(max_length=7)] = None
    security_code: Annotated[str | None, Field(max_length=8)] = None
    name: Annotated[str | None, Field(max_length=64)] = None
    format: Annotated[str | None, Field(min_length=1, max_length=64)] = None


# What a validation error may name: the schema's fields, never a key the caller chose.
_NAMED: Final = frozenset({"body", "path", "session_id", *CardBody.model_fields})


def _named(part: object) -> bool:
    return isinstance(part, int) or part in _NAMED  # an int: a position in the body


class CaptureAnswer(BaseModel):
    """A capture's answer: the token, its format, the masked number and the expiry."""

    token: str
    format: str
    masked_pan: str
    expiry: str | None


def _request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def _client_address(request: Request) -> str:
    # The peer of the TLS connection (`build_capture_server` turns uvicorn's forwarded-
    # header handling off). Behind a load balancer, configure it to keep the client
    # address (PROXY protocol) rather than trusting a forwarded header here.
    return request.client.host if request.client is not None else "unknown"


class _Now(TypedDict):
    allow_http_localhost: bool
    client_address: str
    request_id: str
    audit: bool


def _now(state: CaptureState, request: Request) -> _Now:
    """What `hosted_fields_session` asks "is the session's origin allowed now" with, and
    names in the audit entry of a refusal."""
    return _Now(
        allow_http_localhost=state.allow_http_localhost,
        client_address=_client_address(request),
        request_id=_request_id(request),
        # The page and the preflight need no secret, so their refusals are anonymous
        # ones: past the listener's limit of refusal entries they are counted, not
        # written, as the capture's are (`_CaptureGuard`, review 28b C1).
        audit=not request.scope["state"].get("quiet_refusals", False),
    )


def create_capture_app(state: CaptureState) -> FastAPI:
    """Return the capture listener's app for `state`."""
    app = FastAPI(
        title="Cofre capture listener",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,
    )
    service = state.service

    @app.exception_handler(CofreError)
    async def cofre_error(request: Request, exc: CofreError) -> Response:
        headers = security_headers()
        wait = getattr(exc, "retry_after", None)
        if isinstance(wait, float | int):
            headers["Retry-After"] = retry_after_value(wait)
        headers.update(request.scope["state"].get("cors", {}))
        return problem_for(request.scope, exc.code, str(exc), _request_id(request), headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        # Only where and which rule: never the input, never pydantic's message, never a
        # field's name the schema does not know (review 34: it is the caller's text).
        errors = [
            {
                "loc": [str(p) if _named(p) else "?" for p in err.get("loc", ())][:4],
                "type": str(err.get("type")),
            }
            for err in exc.errors()
        ][:10]
        code = (
            "malformed_json"
            if any(e["type"] == "json_invalid" for e in errors)
            else "invalid_request"
        )
        request.scope["state"]["problem_code"] = code
        return problem(
            code,
            "the request does not match the schema (see errors: where and which rule)",
            request_id=_request_id(request),
            extra={"errors": errors},
            headers={**security_headers(), **request.scope["state"].get("cors", {})},
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        code = "payload_too_large" if request.scope["state"].get("body_too_large") else code
        return problem_for(request.scope, code, "", _request_id(request), security_headers())

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        _log.error("unexpected error", error=type(exc).__name__, request_id=_request_id(request))
        return problem_for(
            request.scope, "internal_error", "", _request_id(request), security_headers()
        )

    @app.get("/v1/capture.js")
    def capture_script() -> Response:
        """The script a shop's page loads (with its SRI hash) to mount the fields."""
        # Any page may load it (it holds nothing secret); `crossorigin="anonymous"`,
        # which SRI needs for a script of another origin, needs this CORS header.
        headers = {
            **security_headers(),
            "Cache-Control": "public, max-age=300",
            "Access-Control-Allow-Origin": "*",
            "Cross-Origin-Resource-Policy": "cross-origin",
        }
        return Response(asset(CAPTURE_SCRIPT), media_type=_ASSET_TYPES[".js"], headers=headers)

    def own_asset(filename: str, suffix: str, request: Request) -> Response:
        data = asset(filename)
        # The page names the asset with its version (`asset_version`). Asked for
        # another one (a page of another version of the vault, in a rollout), this copy
        # is not what the page wants: it is answered uncached, so no browser or CDN
        # keeps it under that URL.
        wanted = request.query_params.get("v")
        cached = wanted is None or wanted == asset_version(data)
        headers = {
            **security_headers(),
            "Cache-Control": "public, max-age=300" if cached else "no-store",
        }
        return Response(data, media_type=_ASSET_TYPES[suffix], headers=headers)

    @app.get("/v1/hosted-fields.js")
    def hosted_fields_script(request: Request) -> Response:
        """The hosted fields' own script (same origin as their page)."""
        return own_asset("hosted-fields.js", ".js", request)

    @app.get("/v1/hosted-fields.css")
    def hosted_fields_style(request: Request) -> Response:
        """The hosted fields' default style."""
        return own_asset("hosted-fields.css", ".css", request)

    @app.get("/v1/hosted-fields/{session_id}")
    def hosted_fields(session_id: SessionPath, request: Request) -> Response:
        """The card inputs of a live session, framed only by the session's origin."""
        with state.slots.place():
            service.charge_rate(
                f"capture-address {address_key(_client_address(request))}", state.per_address
            )
            # Refused (403 policy_denied, audited) when the session's origin is not allowed
            # now, as its capture is: the page no longer shows the fields to that origin.
            found = (
                service.hosted_fields_session(session_id, **_now(state, request))
                if is_session_id(session_id)
                else None
            )
        if found is None:
            return problem_for(
                request.scope,
                "not_found",
                "no live capture session with this id",
                _request_id(request),
                security_headers(),
            )
        origin, code = found
        csp = f"{BASE_CSP}; frame-ancestors {origin}"
        return Response(
            _hosted_fields_page(session_id, origin, code),
            media_type="text/html; charset=utf-8",
            headers=security_headers(csp),
        )

    @app.options("/v1/capture/{session_id}")
    def capture_preflight(session_id: SessionPath, request: Request) -> Response:
        """CORS preflight: only the session's own origin is answered."""
        origin = request.headers.get("origin")
        # Charged before the session is read, as the fields' page is (review 27).
        with state.slots.place():
            service.charge_rate(
                f"capture-address {address_key(_client_address(request))}", state.per_address
            )
            # Only the session's own origin reaches the check that its origin is allowed
            # now (403 policy_denied, audited, no CORS); any other is an unknown session.
            found = (
                service.hosted_fields_session(session_id, origin=origin, **_now(state, request))
                if origin is not None and is_session_id(session_id)
                else None
            )
        if origin is None or found is None or found[0] != origin:
            return problem_for(
                request.scope,
                "origin_not_allowed",
                "this origin may not use the capture session",
                _request_id(request),
                security_headers(),
            )
        return Response(status_code=204, headers={**security_headers(), **cors_headers(origin)})

    @app.post("/v1/capture/{session_id}", response_model=CaptureAnswer)
    async def capture(session_id: SessionPath, body: CardBody, request: Request) -> Response:
        """Tokenize the card under the session; answer token, masked number, expiry."""
        return await _capture(state, session_id, body, request)

    _add_guard(app, state)
    return app


async def _capture(
    state: CaptureState, session_id: str, body: CardBody, request: Request
) -> Response:
    origin = request.headers.get("origin")
    frame = origin == state.public_origin
    scope_state = request.scope["state"]
    try:
        card = CardCapture(
            session_id=session_id,
            secret=body.secret,
            origin=origin,
            client_address=_client_address(request),
            pan=Pan.normalize(body.number),
            token_format=body.format,
            expiry=body.expiry,
            name=body.name,
            security_code=body.security_code,
            frame=frame,
        )
        with state.slots.place():  # 503 capture_busy at once, to every origin alike
            result = await run_in_threadpool(
                state.service.capture_card,
                card,
                per_session=state.per_session,
                per_address=state.per_address,
                request_id=_request_id(request),
                # The listener is past its limit of refusal entries: a refusal before the
                # session is known is counted by the guard, not written (review 30).
                audit_anonymous=not scope_state.get("quiet_refusals", False),
                allow_http_localhost=state.allow_http_localhost,
            )
    except CofreError as exc:
        # Readable by the session's own origin only (the capture review), and only once
        # its secret matched, as the vault marks the refusal: an unknown session, a wrong
        # secret, a limit or a card refused here are one answer to every origin, and no
        # session is read again for it (review 27).
        if not frame:
            scope_state["cors"] = readable_by(origin, refusal_origin(exc))
        raise
    # The capture passed the session's origin check (or came from the fields' own page).
    scope_state["cors"] = readable_by(origin, None if frame else origin)
    answer = CaptureAnswer(
        token=result.token.token,
        format=result.token.format,
        masked_pan=result.masked,
        expiry=result.expiry,
    )
    return Response(
        answer.model_dump_json().encode(),
        media_type="application/json",
        headers={**security_headers(), **scope_state["cors"]},
    )


def _add_guard(app: FastAPI, state: CaptureState) -> None:
    """Put `_CaptureGuard` in front of `app`, with its refusal limits."""
    service = state.service
    # Each client address's refusals, limited and counted as the API's are per identity
    # (`api.refusals`): anyone on the internet can send this listener requests, and
    # each refusal was an audit entry. And the listener's refusal entries as a whole:
    # many addresses (a botnet, a /48 of IPv6) are counted past `listener_refusals`.
    per_address = _refusal_limiter(service, state.per_address)
    listener = _refusal_limiter(service, state.listener_refusals or LISTENER_REFUSALS)
    app.state.refusal_limiters = [per_address, listener]
    app.add_middleware(
        _CaptureGuard,
        recorder=service.record,
        refusals=per_address,
        listener=listener,
        slots=state.slots,
    )


def _refusal_limiter(service: VaultService, limit: RateLimit) -> RefusalLimiter:
    return RefusalLimiter(
        lambda _: limit,
        service.record,
        action="capture.requests_refused",
        describe=_describe_address,
    )


def _describe_address(key: str) -> tuple[str, dict[str, DetailValue]]:
    # "*": the listener as a whole, or addresses forgotten for memory.
    return ANONYMOUS_CAPTURE, {"client": key[:64]}


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _CaptureGuard:
    """Request id, a small body limit, JSON only for POST, one log line per request
    (route template, status, problem code; never the path's session id or the body),
    and one ``capture.request`` audit entry for every refusal no operation audited
    (a malformed body, an unknown path, a card number that is not digits), written
    before the response starts (PCI DSS 10.2). A client address whose refusals pass
    the per-address limit is answered 429 before anything else, those answers counted
    (`refusals`, `api.refusals`); past the `listener`'s limit of refusal entries from
    all addresses, the rest are counted too, and still answered. A ``capture_busy`` (no
    place left in the listener's share of the pool, `slots`) is always counted in the
    listener's count, never written; so is a refusal entry that finds no place."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        recorder: Callable[[AuditEvent], None] | None = None,
        refusals: RefusalLimiter | None = None,
        listener: RefusalLimiter | None = None,
        slots: CaptureSlots | None = None,
    ) -> None:
        self.app = app
        self.slots = slots or CaptureSlots(10)
        self.recorder = recorder
        self.refusals = refusals
        self.listener = listener

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = secrets.token_urlsafe(16)
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500}
        address = address_key(str((scope.get("client") or ("unknown",))[0]))
        spent, admitted = self.refusals.admit(address) if self.refusals else (None, NOTHING_HELD)
        if self.listener is not None and self.listener.is_spent(LISTENER_KEY):
            scope["state"]["quiet_refusals"] = True

        with request_trail() as trail:

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    code = status["code"] = message["status"]
                    problem = scope["state"].get("problem_code")
                    admitted.release()
                    held = spent  # or a refusal past the limit (`RefusalLimiter.charge`)
                    if self.refusals is not None and spent is None and charged(code, problem):
                        held = self.refusals.charge(address, hold=code >= 400 and not trail)
                    if problem == "capture_busy" and self.listener is not None:
                        self.listener.count(LISTENER_KEY)  # shed load: never one entry each
                    elif code >= 400 and not trail:
                        await self._audit_refusal(scope, code, request_id, address, held)
                    elif self.listener is not None and 400 <= code < 500:
                        # Written by the operation itself (a wrong secret, an unknown
                        # session): it spends the listener's budget all the same.
                        self.listener.charge(LISTENER_KEY)
                    message["headers"] = [
                        *message.get("headers", []),
                        (b"x-request-id", request_id.encode()),
                        *closing(scope),  # review 34: no bytes left for the next request
                    ]
                await send(message)

            rejection = reject_early(scope, request_id, MAX_BODY)
            if spent is not None:
                rejection = _refused_too_often(scope, spent, request_id)
            try:
                if rejection is not None:
                    await rejection(scope, receive, send_with_id)
                else:
                    await self.app(scope, limited(receive, scope["state"], MAX_BODY), send_with_id)
            finally:
                admitted.release()  # if it ended without an answer (disconnect, error)
        route = getattr(scope.get("route"), "path", "unmatched")
        _log.info(
            "capture request",
            method=method_name(scope["method"]),
            route=route,
            status=status["code"],
            code=scope["state"].get("problem_code") or None,
            request_id=request_id,
        )

    async def _audit_refusal(
        self, scope: Scope, status: int, request_id: str, address: str, spent: Spent | None
    ) -> None:
        """The refusal's entry: written, or counted when it is a held answer past the
        first of its episode or the listener is past its limit of refusal entries."""
        if spent is not None and not spent.audit:
            return  # in its address's count
        # The first held answer of an address's episode spends the listener's budget
        # too: each address of a flood wrote one entry past the listener's limit
        # (atk48c; an IPv6 /48 is 65,536 addresses).
        if self.listener is not None:
            busy = self.listener.spent(LISTENER_KEY, note=address)
            if busy is not None and not busy.audit:
                return  # counted
            if busy is None:
                self.listener.charge(LISTENER_KEY)
        if await self._record_refusal(scope, status, request_id):
            return
        if spent is not None and self.refusals is not None:
            self.refusals.count(address)  # not written: in its address's count
        elif self.listener is not None:
            self.listener.count(LISTENER_KEY)  # not written: in the listener's count

    async def _record_refusal(self, scope: Scope, status: int, request_id: str) -> bool:
        """Write the refusal's `capture.request` entry; whether it was."""
        if self.recorder is None:
            return True
        client = scope.get("client") or ("unknown", 0)
        event = AuditEvent(
            action="capture.request",
            outcome=Outcome.DENIED if status in (401, 403, 429) else Outcome.FAILED,
            actor=ANONYMOUS_CAPTURE,
            request_id=request_id,
            details={
                "method": method_name(scope["method"]),
                "route": getattr(scope.get("route"), "path", "unmatched"),
                "status": status,
                "code": scope["state"].get("problem_code") or None,
                "client": str(client[0])[:64],
                **({"limit": "refusals"} if scope["state"].get("refusals_spent") else {}),
            },
            source=Source(address=str(client[0])) if client[0] != "unknown" else None,
        )
        try:
            with self.slots.place():  # an entry's write is the listener's work too
                await run_in_threadpool(self.recorder, event)
        except CofreError as exc:
            # The request was refused: nothing to undo; the log line says it.
            # The cause too (a fixed text naming the driver error, `db_error_name`): the
            # on-call reads why from the log, not only from readiness (session 31).
            _log.error(
                "audit entry not written", code=exc.code, detail=str(exc), request_id=request_id
            )
            return False
        return True


def _refused_too_often(scope: Scope, spent: Spent, request_id: str) -> Response:
    """The 429 for a client address whose refusals passed its limit (`api.refusals`)."""
    scope["state"]["refusals_spent"] = True
    detail = f"{_HELD_BACK}; retry after {spent.retry_after:.2f}s"
    headers = {**security_headers(), "Retry-After": retry_after_value(spent.retry_after)}
    return problem_for(scope, "rate_limited", detail, request_id, headers)
