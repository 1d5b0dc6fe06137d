"""The FastAPI application factory: routes, problem+json errors, request ids, limits,
logs, traces and metrics.

IN PCI SCOPE. `create_app` holds no module-level state: everything the app needs comes
in an `AppState`. The caller's identity comes from the verified client certificate in
the ASGI ``tls`` extension (`api.tls`), never from a header.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final, cast

import structlog
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from api.errors import ApiError
from api.guard import RequestGuard
from api.models import (
    CeremonyResponse,
    ConsistencyProofResponse,
    DeleteResponse,
    DetokenizeBatchRequest,
    DetokenizeBatchResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    EvidenceRequest,
    HealthResponse,
    InclusionProofResponse,
    LookupRequest,
    LookupResponse,
    MaskedResponse,
    Problem,
    RotationRequest,
    SignedHeadResponse,
    TokenizeBatchRequest,
    TokenizeBatchResponse,
    TokenizeRequest,
    TokenResponse,
)
from api.observability import Telemetry, make_telemetry
from api.problems import PROBLEM_JSON, problem
from api.tls import identity_from_scope
from audit.errors import ProofError
from audit.merkle import leaf_hash
from audit.store import AuditStore
from cofre import __version__
from cofre.errors import CofreError
from cofre.redaction import mask_pan_like
from vault.errors import BatchItemInvalid
from vault.pan import Pan
from vault.rotation import KeyRotation
from vault.service import CallContext, Revealed, TokenRecord, VaultService
from vault.service import TokenizeRequest as ServiceTokenizeRequest

_log = structlog.get_logger("cofre.api")


@dataclass
class AppState:
    """Everything the app uses. `check_ready` returns check name -> "ok" or raises the
    `CofreError` of the first failing check."""

    service: VaultService
    audit: AuditStore
    check_ready: Callable[[], dict[str, str]]
    telemetry: Telemetry
    rotation: KeyRotation | None = None
    evidence: Callable[[CallContext, EvidenceRequest], bytes] | None = None
    # /docs and /openapi.json (`cofre dev`; off in `cofre serve` unless configured).
    api_docs: bool = False


def _request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def call_context(request: Request) -> CallContext:
    """The caller: identity from the TLS connection, request id from the guard."""
    state = request.scope.setdefault("state", {})
    identity = state.get("identity") or identity_from_scope(request.scope)
    state["identity"] = identity
    return CallContext(identity=identity, request_id=_request_id(request))


Caller = Annotated[CallContext, Depends(call_context)]
TokenPath = Annotated[str, Path(min_length=1, max_length=64)]
RoutePath = Annotated[str, Path(min_length=1, max_length=64)]
CeremonyPath = Annotated[str, Path(min_length=1, max_length=64)]


def _token_response(record: TokenRecord) -> TokenResponse:
    return TokenResponse(
        token=record.token,
        token_id=record.token_id,
        format=record.format,
        created_at=record.created_at,
        expires_at=record.expires_at,
        metadata=dict(record.metadata),
        existing=record.existing,
    )


def _detokenized(revealed: Revealed) -> DetokenizeResponse:
    if revealed.pan is not None:
        return DetokenizeResponse(token=revealed.token, pan=revealed.pan.reveal(), reveal="full")
    return DetokenizeResponse(token=revealed.token, pan=revealed.masked, reveal="masked")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    status: {"model": Problem, "content": {PROBLEM_JSON: {}}}
    for status in (400, 401, 403, 404, 409, 410, 413, 415, 422, 429, 502, 503, 504)
}


def create_app(state: AppState) -> FastAPI:  # noqa: PLR0915 - one route table
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
    )
    service = state.service

    # ------------------------------------------------------------------ errors
    @app.exception_handler(CofreError)
    async def cofre_error(request: Request, exc: CofreError) -> Response:
        extra: dict[str, Any] = {}
        headers: dict[str, str] = {}
        if isinstance(exc, BatchItemInvalid):
            extra = {"item": exc.index, "item_code": exc.item_code}
        retry_after = getattr(exc, "retry_after", None)  # RateLimited, Throttled
        if isinstance(retry_after, float | int):
            headers["Retry-After"] = str(max(1, round(retry_after + 0.5)))
        request.scope["state"]["problem_code"] = exc.code
        return problem(
            exc.code,
            str(exc),
            request_id=_request_id(request),
            extra=extra,
            headers=headers or None,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        # pydantic's errors carry the input (which may be a PAN): keep only where and why.
        errors = [
            {
                # A location holds caller-chosen names (a metadata key): masked too.
                "loc": [mask_pan_like(str(p)) for p in err.get("loc", ())],
                "msg": mask_pan_like(str(err.get("msg"))),
            }
            for err in exc.errors()
        ][:20]
        code = (
            "malformed_json"
            if any(e.get("type") == "json_invalid" for e in exc.errors())
            else "invalid_request"
        )
        request.scope["state"]["problem_code"] = code
        return problem(
            code,
            "the request does not match the schema (see errors: where and why)"
            if code == "invalid_request"
            else "the body is not valid JSON",
            request_id=_request_id(request),
            extra={"errors": errors},
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        state_ = request.scope.setdefault("state", {})
        if state_.get("body_too_large"):
            code = "payload_too_large"
        else:
            code = {
                400: "malformed_json",
                404: "not_found",
                405: "method_not_allowed",
                413: "payload_too_large",
                415: "unsupported_media_type",
            }.get(exc.status_code, "invalid_request")
        state_["problem_code"] = code
        return problem(code, None, request_id=_request_id(request))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        if request.scope.get("state", {}).get("body_too_large"):
            return problem("payload_too_large", None, request_id=_request_id(request))
        _log.error("unexpected error", error=type(exc).__name__, request_id=_request_id(request))
        return problem("internal_error", None, request_id=_request_id(request))

    # ------------------------------------------------------------------ tokens
    @app.post("/v1/tokenize", response_model=TokenResponse, tags=["tokens"])
    def tokenize(body: TokenizeRequest, caller: Caller) -> TokenResponse:
        """Tokenize a PAN in a format the caller's policy allows."""
        record = service.tokenize(
            caller,
            ServiceTokenizeRequest(
                pan=Pan(body.pan),
                format=body.format,
                metadata=body.metadata,
                ttl_seconds=body.ttl_seconds,
                idempotency_key=body.idempotency_key,
            ),
        )
        return _token_response(record)

    @app.post("/v1/tokenize/batch", response_model=TokenizeBatchResponse, tags=["tokens"])
    def tokenize_batch(body: TokenizeBatchRequest, caller: Caller) -> TokenizeBatchResponse:
        """Tokenize up to 1,000 PANs, all or nothing; results in request order."""
        requests = []
        for index, item in enumerate(body.items):
            try:
                pan = Pan(item.pan)
            except CofreError as exc:
                raise BatchItemInvalid(index, exc.code, str(exc)) from None
            requests.append(
                ServiceTokenizeRequest(
                    pan=pan,
                    format=item.format,
                    metadata=item.metadata,
                    ttl_seconds=item.ttl_seconds,
                    idempotency_key=item.idempotency_key,
                )
            )
        records = service.tokenize_batch(caller, requests)
        return TokenizeBatchResponse(results=[_token_response(r) for r in records])

    @app.post("/v1/detokenize", response_model=DetokenizeResponse, tags=["tokens"])
    def detokenize(body: DetokenizeRequest, caller: Caller) -> DetokenizeResponse:
        """The PAN behind a token: in full if the caller's policy reveals it, else masked."""
        return _detokenized(service.detokenize(caller, body.token))

    @app.post("/v1/detokenize/batch", response_model=DetokenizeBatchResponse, tags=["tokens"])
    def detokenize_batch(body: DetokenizeBatchRequest, caller: Caller) -> DetokenizeBatchResponse:
        """Detokenize up to 1,000 tokens, all or nothing; results in request order."""
        return DetokenizeBatchResponse(
            results=[_detokenized(r) for r in service.detokenize_batch(caller, body.tokens)]
        )

    @app.post("/v1/detokenize-masked", response_model=MaskedResponse, tags=["tokens"])
    def detokenize_masked(body: DetokenizeRequest, caller: Caller) -> MaskedResponse:
        """Only the masked PAN (first six, last four) behind a token."""
        revealed = service.detokenize_masked(caller, body.token)
        return MaskedResponse(token=revealed.token, masked_pan=revealed.masked)

    @app.post("/v1/lookup", response_model=LookupResponse, tags=["tokens"])
    def lookup(body: LookupRequest, caller: Caller) -> LookupResponse:
        """The live tokens of a PAN (optionally of one format)."""
        records = service.lookup(caller, Pan(body.pan), body.format)
        return LookupResponse(tokens=[_token_response(r) for r in records])

    @app.get("/v1/tokens/{token}", response_model=TokenResponse, tags=["tokens"])
    def token_metadata(token: TokenPath, caller: Caller) -> TokenResponse:
        """A token's format, dates and metadata (never the PAN)."""
        return _token_response(service.token_info(caller, token))

    @app.delete("/v1/tokens/{token}", response_model=DeleteResponse, tags=["tokens"])
    def delete_token(token: TokenPath, caller: Caller) -> DeleteResponse:
        """Crypto-shred a token: the ciphertext is erased, a tombstone and the audit remain."""
        return DeleteResponse(token=token, deleted=service.delete(caller, token))

    # ------------------------------------------------------------------ relay
    @app.post(
        "/v1/relay/{route}",
        tags=["relay"],
    )
    def relay(route: RoutePath, body: dict[str, Any], caller: Caller) -> JSONResponse:
        """Send `body` to an allow-listed upstream (the policy's relay route): the tokens
        at the route's places are replaced by PANs inside the vault; the upstream's answer
        comes back with its status, PANs in it tokenized or masked."""
        result = service.relay(caller, route, body)
        return JSONResponse(result.body, status_code=result.status)

    # ------------------------------------------------------------------ key ceremonies
    def _rotation() -> KeyRotation:
        if state.rotation is None:
            raise ApiError("key administration is not enabled on this node")
        return state.rotation

    @app.get("/v1/admin/keys", tags=["keys"])
    def key_inventory(caller: Caller) -> dict[str, Any]:
        """Token keys and data keys, their attributes, states and how many records each
        still protects (security officers). Never key material."""
        return _rotation().inventory(caller.identity)

    @app.get("/v1/admin/keys/rotations", response_model=list[CeremonyResponse], tags=["keys"])
    def list_rotations(caller: Caller) -> list[CeremonyResponse]:
        return [
            CeremonyResponse.model_validate(c.as_json())
            for c in _rotation().list_ceremonies(caller.identity)
        ]

    @app.post(
        "/v1/admin/keys/rotations", response_model=CeremonyResponse, status_code=201, tags=["keys"]
    )
    def propose_rotation(body: RotationRequest, caller: Caller) -> CeremonyResponse:
        """Propose a rotation (kek, data or fingerprint); it runs after other officers
        approve it (dual control, enforced here)."""
        ceremony = _rotation().propose(caller.identity, body.kind, caller.request_id)
        return CeremonyResponse.model_validate(ceremony.as_json())

    @app.get(
        "/v1/admin/keys/rotations/{ceremony_id}", response_model=CeremonyResponse, tags=["keys"]
    )
    def rotation_status(ceremony_id: CeremonyPath, caller: Caller) -> CeremonyResponse:
        return CeremonyResponse.model_validate(
            _rotation().status(caller.identity, ceremony_id).as_json()
        )

    @app.post(
        "/v1/admin/keys/rotations/{ceremony_id}/approve",
        response_model=CeremonyResponse,
        tags=["keys"],
    )
    def approve_rotation(ceremony_id: CeremonyPath, caller: Caller) -> CeremonyResponse:
        return CeremonyResponse.model_validate(
            _rotation().approve(caller.identity, ceremony_id, caller.request_id).as_json()
        )

    @app.post(
        "/v1/admin/keys/rotations/{ceremony_id}/cancel",
        response_model=CeremonyResponse,
        tags=["keys"],
    )
    def cancel_rotation(ceremony_id: CeremonyPath, caller: Caller) -> CeremonyResponse:
        return CeremonyResponse.model_validate(
            _rotation().cancel(caller.identity, ceremony_id, caller.request_id).as_json()
        )

    # ------------------------------------------------------------------ evidence
    @app.post(
        "/v1/evidence",
        tags=["audit"],
        responses={
            200: {
                "content": {"application/gzip": {}},
                "description": "the signed evidence bundle (tar.gz)",
            }
        },
    )
    def export_evidence(body: EvidenceRequest, caller: Caller) -> Response:
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

    # ------------------------------------------------------------------ audit
    @app.get("/v1/audit/head", response_model=SignedHeadResponse, tags=["audit"])
    def audit_head(caller: Caller) -> SignedHeadResponse | Response:
        """The latest signed tree head of the audit log."""
        service.audit_read(caller, "head")
        head = state.audit.latest_head()
        if head is None:
            return problem("not_found", "no signed tree head yet", request_id=caller.request_id)
        return SignedHeadResponse.model_validate(head.as_json())

    @app.get("/v1/audit/proof/inclusion", response_model=InclusionProofResponse, tags=["audit"])
    def audit_inclusion(
        caller: Caller,
        index: Annotated[int, Query(ge=0, le=2**62)],
        size: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    ) -> InclusionProofResponse | Response:
        """An inclusion proof of entry `index` in the tree of `size` entries."""
        service.audit_read(caller, "inclusion proof")
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

    @app.get("/v1/audit/proof/consistency", response_model=ConsistencyProofResponse, tags=["audit"])
    def audit_consistency(
        caller: Caller,
        size1: Annotated[int, Query(ge=1, le=2**62)],
        size2: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    ) -> ConsistencyProofResponse | Response:
        """A consistency proof between two tree sizes."""
        service.audit_read(caller, "consistency proof")
        try:
            to = size2 if size2 is not None else state.audit.size()
            proof = state.audit.consistency_proof(size1, to)
        except ProofError as exc:
            return problem("not_found", str(exc), request_id=caller.request_id)
        return ConsistencyProofResponse(size1=size1, size2=to, proof=[_b64(p) for p in proof])

    # ------------------------------------------------------------------ health
    @app.get("/healthz", response_model=HealthResponse, tags=["health"])
    def healthz() -> HealthResponse:
        """The process is alive."""
        return HealthResponse(status="alive")

    @app.get("/readyz", response_model=HealthResponse, tags=["health"])
    def readyz() -> HealthResponse:
        """HSM session works, database reachable, audit sequencer alive, CRL (when
        configured) loaded and not expired."""
        checks = state.check_ready()
        for name, check in app.state.ready_checks:
            check()
            checks[name] = "ok"
        return HealthResponse(status="ready", checks=checks)

    app.state.ready_checks = []

    # The OpenAPI stub has no service: no audit there.
    recorder = getattr(service, "record", None)
    app.add_middleware(RequestGuard, telemetry=state.telemetry, recorder=recorder)
    return app


def add_ready_check(app: FastAPI, name: str, check: Callable[[], None]) -> None:
    """Make `/readyz` also run `check` (which raises a `CofreError` when not ready)."""
    app.state.ready_checks.append((name, check))


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI document, without a running vault (docs/openapi.json holds it;
    a test keeps the two equal)."""
    stub = AppState(
        service=cast(VaultService, None),
        audit=cast(AuditStore, None),
        check_ready=dict,
        telemetry=make_telemetry(),
    )
    return create_app(stub).openapi()
