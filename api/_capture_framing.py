"""The capture listener's refusals of a request for how its body is framed, before the
app reads it, and the connections it ends after an answer (`api.capture._CaptureGuard`).

IN PCI SCOPE (the capture listener receives card data). Review 34: a request with both
``Content-Length`` and ``Transfer-Encoding`` was answered and its connection kept, and
h11 framed it by its chunks. A proxy or balancer in front that frames it by its length
(the CL.TE desync) then forwards the bytes after the chunks inside this request, while
the listener reads them as the next request, ahead of the next shopper's on that
proxy's pooled connection: request smuggling. RFC 9112 6.1 says a server MUST close the
connection after answering such a request. The same held for a body the listener
answered without reading (a refusal before the app, a page or a preflight sent with a
body, a ``100-continue`` whose body never came): the bytes after the answer were
parsed by a framing the peer may not share. So the answer to a request that carries
``Transfer-Encoding`` (no browser sends one here), or whose announced body was not read
whole, ends the connection (`api._capture_body.closing`).
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
