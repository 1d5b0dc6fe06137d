"""The capture listener's refusals of a request for how its body is framed, before the
app reads it (`api.capture._CaptureGuard`).

IN PCI SCOPE (the capture listener receives card data).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from starlette.responses import Response

from api._capture_body import framed_within
from api._capture_headers import security_headers
from api.guard import problem_for

__all__ = ["reject_early"]

Scope = MutableMapping[str, Any]


def reject_early(scope: Scope, request_id: str, limit: int) -> Response | None:
    if scope["method"] != "POST":
        return None
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if not framed_within(headers, limit):
        return problem_for(
            scope,
            "payload_too_large",
            f"send a body of at most {limit} bytes, with Content-Length",
            request_id,
            security_headers(),
        )
    if content_type != "application/json":
        return problem_for(
            scope,
            "unsupported_media_type",
            "send application/json",
            request_id,
            security_headers(),
        )
    return None
