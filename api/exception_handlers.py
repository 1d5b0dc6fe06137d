"""Every error the app answers, as RFC 9457 problem+json with a stable `code`.

IN PCI SCOPE. No handler echoes what the caller sent: pydantic's validation errors carry
the input (which may be a PAN), so only where and why is kept, masked.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from api.dependencies import request_id
from api.problems import PROBLEMS, problem, retry_after
from cofre.errors import CofreError
from cofre.redaction import mask_pan_like_or_withhold, name_holds_pan_like
from vault.errors import BatchItemInvalid

_log = structlog.get_logger("cofre.api")


async def cofre_error(request: Request, exc: CofreError) -> Response:
    """A `CofreError`: its own code, the failing item of a batch, and `Retry-After`."""
    extra: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if isinstance(exc, BatchItemInvalid):
        extra = {"item": exc.index, "item_code": exc.item_code}
    wait = getattr(exc, "retry_after", None)  # RateLimited, Throttled, UpstreamBusy
    if isinstance(wait, float | int):
        headers["Retry-After"] = retry_after(wait)
    request.scope["state"]["problem_code"] = exc.code
    if PROBLEMS.get(exc.code, PROBLEMS["internal_error"])[0] >= 500:
        # The cause, for the request's log line (`api.guard`): a 503 with `/readyz` at
        # 200 (a lock an operator holds on a table the vault writes) said its cause,
        # `(QueryCanceled)`, in the answer's body alone (drill 36). Masked as the body is.
        request.scope["state"]["problem_detail"] = mask_pan_like_or_withhold(str(exc))
    return problem(
        exc.code,
        str(exc),
        request_id=request_id(request),
        extra=extra,
        headers=headers or None,
    )


async def validation_error(request: Request, exc: RequestValidationError) -> Response:
    """A body or parameter that does not match the schema: `invalid_request` or
    `malformed_json`."""
    # pydantic's errors carry the input (which may be a PAN): keep only where and why.
    # The twenty answered are the only ones masked: a body may bring thousands, and this
    # runs on the event loop (session 36 review).
    errors = [
        {
            "loc": [_place(p) for p in err.get("loc", ())],
            "msg": mask_pan_like_or_withhold(str(err.get("msg"))),
        }
        for err in exc.errors()[:20]
    ]
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
        request_id=request_id(request),
        extra={"errors": errors},
    )


def _place(part: object) -> str:
    """A part of a validation error's location, as the answer names it. A location holds
    names the caller chose (an unknown field, a metadata key): one that holds a card by
    the rule for such names (a format, a route, an idempotency key) is named ``?``. The
    detector masking free text leaves ``41111111.11111111`` as it is, and such a key went
    back in clear (session 36 review)."""
    text = str(part)
    try:
        holds = name_holds_pan_like(text)
    except Exception:  # noqa: BLE001 - a detector failure withholds, never answers the text
        holds = True
    return "?" if holds else mask_pan_like_or_withhold(text)


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Starlette's own errors (unknown path, wrong method, body too large, ...)."""
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
    return problem(code, None, request_id=request_id(request))


async def unexpected(request: Request, exc: Exception) -> Response:
    """Anything else: `internal_error`, with only the exception's class in the log."""
    if request.scope.get("state", {}).get("body_too_large"):
        return problem("payload_too_large", None, request_id=request_id(request))
    _log.error("unexpected error", error=type(exc).__name__, request_id=request_id(request))
    return problem("internal_error", None, request_id=request_id(request))


def add_exception_handlers(app: FastAPI) -> None:
    """Answer every error `app` raises as problem+json."""
    app.exception_handler(CofreError)(cofre_error)
    app.exception_handler(RequestValidationError)(validation_error)
    app.exception_handler(StarletteHTTPException)(http_error)
    app.exception_handler(Exception)(unexpected)
