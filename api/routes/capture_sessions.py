"""Routes of the `capture` area: a shop's backend opens a hosted-fields session.

IN PCI SCOPE, but no card data passes here: the caller (over mutual TLS, operation
``capture``) gets a session id and a client secret for its checkout page; the card
itself goes from the shopper's browser to the capture listener (`api.capture`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt
from starlette.responses import JSONResponse

from api.dependencies import Caller, State
from api.models import FormatName
from cofre.redaction import holds_pan_like
from vault.capture import (
    DEFAULT_TTL_SECONDS,
    MAX_TTL_SECONDS,
    MAX_USES,
    CaptureSessionRequest,
    SessionCodeRule,
)

router = APIRouter()


def _origin_without_card(origin: str) -> str:
    if holds_pan_like(origin) or holds_pan_like(origin.replace(".", " ")):
        raise ValueError("looks like a card number")
    return origin


class CaptureSessionBody(BaseModel):
    """What the shop's backend asks for."""

    model_config = ConfigDict(extra="forbid")

    # The origin goes to the audit entry as sent (its shape is the vault's to check:
    # invalid_origin); no card in it, with its dots read as separators too.
    origin: Annotated[
        str, Field(min_length=1, max_length=255), AfterValidator(_origin_without_card)
    ] = Field(
        description="The exact origin of the page that embeds the hosted fields "
        "(https://host[:port]), the host a DNS name or an IPv4 address: it is written "
        "into CSP frame-ancestors, which cannot name an IPv6 address."
    )
    formats: Annotated[list[FormatName], Field(min_length=1, max_length=8)] = Field(
        description="Token formats a capture may produce; the first is the default."
    )
    ttl_seconds: Annotated[StrictInt, Field(ge=1, le=MAX_TTL_SECONDS)] = DEFAULT_TTL_SECONDS
    max_uses: Annotated[StrictInt, Field(ge=1, le=MAX_USES)] = 1
    security_code: SessionCodeRule = SessionCodeRule.OPTIONAL


class CaptureSessionResponse(BaseModel):
    """The session: its id and client secret (shown once, never again) for the page."""

    session_id: str
    client_secret: str
    origin: str
    formats: list[str]
    expires_at: datetime
    max_uses: int
    security_code: SessionCodeRule
    capture_origin: str | None = Field(
        default=None, description="Where the page loads capture.js from (the capture listener)."
    )


@router.post(
    "/v1/capture-sessions",
    response_model=CaptureSessionResponse,
    status_code=201,
    tags=["capture"],
)
def create_capture_session(body: CaptureSessionBody, caller: Caller, state: State) -> JSONResponse:
    """Open a hosted-fields capture session bound to `origin` and to the caller's token
    domain (tokens captured through it belong there). Single-use unless `max_uses`
    says otherwise; at most 15 minutes. The client secret is shown here once."""
    session = state.service.create_capture_session(
        caller,
        CaptureSessionRequest(
            origin=body.origin,
            formats=tuple(body.formats),
            ttl_seconds=body.ttl_seconds,
            max_uses=body.max_uses,
            security_code=body.security_code,
        ),
        allow_http_localhost=state.capture_allow_http_localhost,
    )
    answer = CaptureSessionResponse(
        session_id=session.session_id,
        client_secret=session.secret,
        origin=session.origin,
        formats=list(session.formats),
        expires_at=session.expires_at,
        max_uses=session.max_uses,
        security_code=session.security_code,
        capture_origin=state.capture_origin,
    )
    # The secret must not sit in a cache on the way.
    return JSONResponse(
        answer.model_dump(mode="json"), status_code=201, headers={"Cache-Control": "no-store"}
    )
