"""The officers' second factor at the API edge: a dependency that key ceremony actions
and evidence exports declare (`vault.officer_mfa` does the checking).

IN PCI SCOPE (authentication). A refusal is an `OfficerMfaError` (401 ``mfa_required``,
``mfa_invalid``, ``mfa_replayed``; 403 ``mfa_not_registered``), answered as problem+json;
the request guard writes the request's audit entry with that code. Without a verifier
configured the action is refused (fail closed), never let through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from api.dependencies import app_state, call_context
from api.errors import ApiError
from policies.models import Action
from vault.approval_proof import SignedAction
from vault.httpsig import HttpRequest


def require_officer_mfa(action: Action) -> Any:
    """A route dependency: the request must carry a valid signature by the caller's
    registered token key when the policy grants the caller `action`."""

    async def verify(request: Request) -> None:
        verifier = app_state(request).officer_mfa
        if verifier is None:
            raise ApiError("officer MFA is not configured on this node")
        caller = call_context(request)
        body = await request.body()
        raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
        headers = {k.lower(): v for k, v in request.headers.items()}
        # Host among them: the @authority the signature covers, which must be one of
        # this vault's own names (`vault.officer_mfa`). Two Hosts (RFC 9112 3.2: a 400)
        # name no vault: h11 refuses them, httptools passes both and the dict would keep
        # the last while `request.url` reads the first. Refused as no Host at all.
        if len(request.headers.getlist("host")) > 1:
            headers["host"] = ""
        signed = HttpRequest(
            method=request.method,
            path=raw_path.decode("latin-1"),
            query=request.scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=body,
        )
        keyid = await run_in_threadpool(verifier.verify, caller.identity, action, signed)
        if keyid is not None:
            request.scope["state"]["mfa_keyid"] = keyid
            # Stored with a ceremony's proposal or approval, verified again whenever its
            # approvals are counted (`vault.approval_proof`).
            request.scope["state"]["mfa_proof"] = SignedAction.of(signed)

    dependency: Callable[[Request], Awaitable[None]] = verify
    return Depends(dependency)
