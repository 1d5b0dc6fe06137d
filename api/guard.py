"""The request guard: the ASGI middleware every request passes first.

IN PCI SCOPE. In order, for every request but the health probes (which are checked
against the CRL in force only, and neither audited nor limited unless refused by it):

1. a request id (the caller's, if it cannot be a card number; else ours);
2. **authentication**: the identity from the verified client certificate, before any
   body is read or validated, so a caller without an identity learns nothing about the
   API's schema and every later refusal (422, 404, 429) is attributed to someone; a
   certificate the CRL revoked since its connection's handshake is refused (401
   ``certificate_revoked``) and its connection closed (`api.crl.RevokedCertificates`);
3. body limits and content type;
4. **one audit entry per request**: the operations audit themselves; a request that
   ends without any entry (401, 422, 404, 405, 413, 415, 429, key-inventory and ceremony
   reads) gets an ``api.request`` entry with its outcome, written before the response
   starts. A 401 names the certificate: subject, serial and SHA-256 fingerprint;
5. **refusals are limited**: each refusal of a request for what it was (not for what
   the vault holds) spends a unit of the caller's refusal bucket, and so does every
   request of an officer or auditor; while it is empty the caller is answered 429
   before anything else, and those answers are counted in the audit log rather than
   written one by one (`api.refusals`); a service the policy leaves without a rate
   limit is not held, but past an allowance its refusals' entries are counted the
   same way (`api._refusal_sieve`, session 39);
6. one log line, span and metric (route template only, never the raw path);
7. an answer to a request whose announced body was not read whole, or that carried
   ``Transfer-Encoding``, ends its connection (`_closing`, session 35).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from api._capture_body import closing, declared_length, limited
from api._refusal_sieve import RequestSieve
from api.crl import RevokedCertificates
from api.errors import CertificateRevoked, CrlExpired, IdentityMissing
from api.observability import Telemetry, method_name
from api.problems import problem, retry_after
from api.refusals import (
    NOTHING_HELD,
    Admission,
    RefusalLimiter,
    Spent,
    charged,
    unauthenticated_key,
)
from api.tls import (
    certificate_summary,
    identity_from_scope,
    peer_certificate,
    source_from_scope,
)
from cofre.errors import CofreError
from cofre.redaction import name_holds_pan_like
from vault.service import (
    AuditEvent,
    DetailValue,
    HexDigest,
    Outcome,
    refusal_sieve,
    request_trail,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY: Final = 64 * 1024
MAX_BATCH_BODY: Final = 4 * 1024 * 1024
# The routes that take MAX_BATCH_BODY: by exact path, so a relay route named "batch"
# (/v1/relay/batch) keeps the small limit (review 26).
BATCH_PATHS: Final = frozenset({"/v1/tokenize/batch", "/v1/detokenize/batch"})
# Liveness and readiness say nothing about card data and are polled every few seconds:
# served without an identity and not audited (the access log still has them).
UNAUDITED_PATHS: Final = frozenset({"/healthz", "/readyz"})
_REQUEST_ID: Final = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_LONG_DIGITS: Final = re.compile(r"[0-9]{9,}")
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
_DENIED_STATUSES: Final = frozenset({401, 403, 429})
_log = structlog.get_logger("cofre.api")


class RequestGuard:
    """Pure ASGI middleware (see the module text). `recorder` writes one audit entry
    durably (None: no audit, for the OpenAPI stub); `revoked` is what the CRL revokes
    now (None: no CRL); `refusals` limits each caller's refusals (None: no limit);
    `unmetered` is the allowance of refusal entries of the callers it leaves unlimited
    (`api._refusal_sieve.unmetered_limiter`; None: none)."""

    def __init__(
        self,
        app: ASGIApp,
        telemetry: Telemetry,
        recorder: Callable[[AuditEvent], None] | None = None,
        revoked: RevokedCertificates | None = None,
        refusals: RefusalLimiter | None = None,
        *,
        unmetered: RefusalLimiter | None = None,
    ) -> None:
        self.app = app
        self.unmetered = unmetered
        self.telemetry = telemetry
        self.recorder = recorder
        self.revoked = revoked
        self.refusals = refusals
        # The access line's logger, bound once: the module's lazy proxy bound a new
        # logger at every call, ~1.5% of a worker's GIL samples under load even when the
        # level drops the line (issue 21). Starlette builds this middleware at the app's
        # first call (the lifespan's start or the first request), after the server
        # configured its logging (`cofre_cli.serving` configures it before building
        # the app); the line follows the configuration in force then.
        self._log = _log.bind()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        request_id = _request_id(headers.get("x-request-id", ""))
        scope.setdefault("state", {})["request_id"] = request_id
        audited = self.recorder is not None and scope["path"] not in UNAUDITED_PATHS
        limit = MAX_BATCH_BODY if scope["path"] in BATCH_PATHS else MAX_BODY
        status_holder = {"status": 500}
        started = time.perf_counter()
        started_ns = time.time_ns()

        spent: Spent | None = None
        admitted = NOTHING_HELD  # the caller's unit it holds while in flight (review 35)
        sieve = self._sieve(scope)

        with request_trail(source_from_scope(scope)) as trail, refusal_sieve(sieve):

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = status_holder["status"] = message["status"]
                    admitted.release()
                    writes = audited and not trail
                    held = spent or self._charge_refusal(scope, status, writes, sieve)
                    if writes and (held is None or held.audit):
                        written = await self._record_outcome(scope, status, request_id)
                        if not written and held is not None:
                            self._count_held(scope, sieve)
                    answer = message.setdefault("headers", [])
                    message["headers"] = [
                        *answer,
                        (b"x-request-id", request_id.encode()),
                        *_closing(scope, headers, limit, answer),
                    ]
                await send(message)

            rejection, spent, admitted = self._gate(scope, request_id)
            # A health probe refused (its certificate revoked) is audited like every 401.
            audited = audited or (rejection is not None and self.recorder is not None)
            if rejection is None:
                rejection = self._reject_early(scope, headers, limit, request_id)
            try:
                if rejection is not None:
                    await rejection(scope, receive, send_with_id)
                else:
                    try:
                        await _interruptible(
                            self.app, scope, limited(receive, scope["state"], limit), send_with_id
                        )
                    except Exception:
                        # Answered 500 by the server's outermost handler, past this guard.
                        status_holder["status"] = 500
                        scope["state"].setdefault("problem_code", "internal_error")
                        if audited and not trail:
                            await self._record_outcome(scope, 500, request_id)
                        raise
            finally:
                admitted.release()  # if it ended without an answer (disconnect, error)
                self._record(
                    scope,
                    status_holder["status"],
                    request_id,
                    started_ns,
                    (time.perf_counter() - started) * 1000,
                )

    def _gate(
        self, scope: Scope, request_id: str
    ) -> tuple[Response | None, Spent | None, Admission]:
        """The answer that refuses the request before the app (None: none), the 429's
        reason if it is one, and the unit of the caller's bucket the request holds."""
        if scope["path"] in UNAUDITED_PATHS:
            # The probes need no identity, but a certificate revoked since its
            # connection's handshake is refused there too (review 29: its open
            # connection kept probing, with no end).
            return self._refuse_revoked(scope, request_id), None, NOTHING_HELD
        rejection = self._authenticate(scope, request_id)
        spent, admitted = self._admit(scope)
        if spent is not None:
            rejection = self._refused_too_often(scope, spent, request_id)
        return rejection, spent, admitted

    def _authenticate(self, scope: Scope, request_id: str) -> Response | None:
        """Put the caller's identity in the scope state, or return the 401 to answer."""
        try:
            identity = identity_from_scope(scope)
        except IdentityMissing as exc:
            return problem_for(scope, exc.code, str(exc), request_id)
        if (revoked := self._refuse_revoked(scope, request_id)) is not None:
            return revoked
        scope["state"]["identity"] = identity
        return None

    def _refuse_revoked(self, scope: Scope, request_id: str) -> Response | None:
        """The 401 to answer when the CRL in force revokes the connection's certificate,
        or the 503 when that CRL has expired."""
        try:
            if self.revoked is not None:
                self.revoked.check(peer_certificate(scope))
        except (CertificateRevoked, CrlExpired) as exc:
            # The handshake passed before the revocation (or the expiry): the connection
            # must not serve the holder again (a pooled keep-alive connection lives for
            # hours).
            headers = {"connection": "close"}
            return problem_for(scope, exc.code, str(exc), request_id, headers=headers)
        return None

    async def _record_outcome(self, scope: Scope, status: int, request_id: str) -> bool:
        """Write the request's one audit entry when nothing else wrote one; whether it
        was. A failure is logged: the request was refused or only read, so nothing is
        undone by it."""
        assert self.recorder is not None  # noqa: S101 - checked by the caller
        state = scope["state"]
        route = getattr(scope.get("route"), "path", "unmatched")
        details: dict[str, DetailValue] = {
            "method": method_name(scope["method"]),
            "route": route,
            "status": status,
            "code": state.get("problem_code") or None,
        }
        if limit := state.get("refusals_spent"):
            details["limit"] = limit
        identity = state.get("identity")
        if identity is None:
            pem = peer_certificate(scope)
            if pem is not None:
                subject, serial, sha256 = certificate_summary(pem)
                details["cert_subject"] = subject
                details["cert_serial"] = HexDigest(serial)
                details["cert_sha256"] = HexDigest(sha256)
        if status < 400:
            outcome = Outcome.SUCCESS
        elif status in _DENIED_STATUSES:
            outcome = Outcome.DENIED
        else:
            outcome = Outcome.FAILED
        event = AuditEvent(
            action="api.request",
            outcome=outcome,
            actor=identity or "unauthenticated",
            request_id=request_id,
            details=details,
            source=source_from_scope(scope),
        )
        try:
            await run_in_threadpool(self.recorder, event)
        except CofreError as exc:
            # The cause too (a fixed text naming the driver error, `db_error_name`): the
            # on-call reads why from the log, not only from readiness (session 31).
            _log.error(
                "audit entry not written", code=exc.code, detail=str(exc), request_id=request_id
            )
            return False
        return True

    def _admit(self, scope: Scope) -> tuple[Spent | None, Admission]:
        """The 429's reason when the caller's refusal bucket is empty, else None and the
        unit the request holds until it is answered."""
        if self.refusals is None or (key := _refusal_key(scope)) is None:
            return None, NOTHING_HELD
        return self.refusals.admit(key)

    def _sieve(self, scope: Scope) -> RequestSieve | None:
        """The request's sieve of refusal entries (`api._refusal_sieve`)."""
        if self.unmetered is None:
            return None
        return RequestSieve(self.unmetered, lambda: _refusal_key(scope))

    def _charge_refusal(
        self, scope: Scope, status: int, writes: bool, sieve: RequestSieve | None
    ) -> Spent | None:
        """If the caller was refused for what its request was (`api.refusals.charged`),
        or is a person whose every request counts, spend a unit of its bucket. A refusal
        past the limit whose entry this guard `writes` is held (`RefusalLimiter.charge`):
        the `Spent` then says whether its entry is written or counted; so is one past
        the allowance of a caller without a limit (`sieve`)."""
        if self.refusals is None or scope["path"] in UNAUDITED_PATHS:
            return None
        if (key := _refusal_key(scope)) is None:
            return None
        code = scope["state"].get("problem_code")
        refused = charged(status, code)
        if refused or self.refusals.spends_every_request(key):
            held = self.refusals.charge(key, hold=refused and writes)
            if held is None and refused and writes and sieve is not None:
                return sieve.hold(code)
            return held
        return None

    def _refused_too_often(self, scope: Scope, spent: Spent, request_id: str) -> Response:
        """The 429 for a caller whose refusal bucket is empty (`api.refusals`)."""
        key = _refusal_key(scope)
        person = (
            self.refusals is not None
            and key is not None
            and self.refusals.spends_every_request(key)
        )
        scope["state"]["refusals_spent"] = "requests" if person else "refusals"
        what = "requests" if person else "refused requests, or requests in flight,"
        return problem_for(
            scope,
            "rate_limited",
            f"too many {what} from this caller; retry after {spent.retry_after:.2f}s",
            request_id,
            headers={"retry-after": retry_after(spent.retry_after)},
        )

    def _count_held(self, scope: Scope, sieve: RequestSieve | None) -> None:
        """A held answer's own entry could not be written: count it instead (review 28),
        where it was held."""
        if sieve is not None and sieve.count(scope["state"].get("problem_code")):
            return
        if self.refusals is not None and (key := _refusal_key(scope)) is not None:
            self.refusals.count(key)

    def _record(
        self, scope: Scope, status: int, request_id: str, started_ns: int, elapsed_ms: float
    ) -> None:
        route = scope.get("route")
        template = getattr(route, "path", "unmatched")
        code = scope["state"].get("problem_code", "")
        identity = scope["state"].get("identity", "")
        # A 5xx answer's cause (`api.exception_handlers.cofre_error`), on this line only.
        cause = scope["state"].get("problem_detail")
        method = method_name(scope["method"])
        attributes = {"route": template, "method": method, "status": status, "code": code}
        self.telemetry.count_request(template, method, status, code)
        self.telemetry.latency.record(elapsed_ms, attributes)
        if self.telemetry.traces_requests:  # else its attributes would only be dropped
            self.telemetry.request_span(
                f"{method} {template}",
                started_ns,
                {
                    "http.request.method": method,
                    "http.route": template,
                    "http.response.status_code": status,
                    "cofre.request_id": request_id,
                    "cofre.identity": identity,
                    **({"cofre.error_code": code} if code else {}),
                },
            )
        self._log.info(
            "request",
            method=method,
            route=template,
            status=status,
            code=code or None,
            request_id=request_id,
            identity=identity or None,
            ms=round(elapsed_ms, 2),
            **({"detail": cause} if cause else {}),
        )

    @staticmethod
    def _reject_early(
        scope: Scope, headers: dict[str, str], limit: int, request_id: str
    ) -> Response | None:
        if scope["method"] not in _BODY_METHODS:
            return None
        text = headers.get("content-length")
        if text is not None:
            if (length := declared_length(text)) is None:
                return problem_for(scope, "invalid_request", "bad Content-Length", request_id)
            if length > limit:
                return problem_for(
                    scope, "payload_too_large", f"the body may be at most {limit} bytes", request_id
                )
            if length == 0:
                return None
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json" and not content_type.endswith("+json"):
            return problem_for(
                scope,
                "unsupported_media_type",
                "request bodies must be application/json",
                request_id,
            )
        return None


def _refusal_key(scope: Scope) -> str | None:
    """Whose refusal bucket a request spends: its identity, or for a certificate the
    vault took none from, the certificate's; None without a certificate."""
    identity = scope["state"].get("identity")
    if identity is not None:
        return str(identity)
    pem = peer_certificate(scope)
    if pem is None:
        return None
    return unauthenticated_key(certificate_summary(pem)[2])


def _closing(
    scope: Scope, request: dict[str, str], limit: int, answer: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """`api._capture_body.closing` for the mTLS listener (session 35: a proxy in front,
    the adapter tier or haproxy's ``http-reuse``, sends many clients' requests down one
    connection; an answer with the body unread or a request with ``Transfer-Encoding``
    left the bytes after it to a framing the proxy may not share, and the next request,
    another client's, was read as this one's body), with two exceptions. Nothing when
    the `answer` already names the connection (a revoked certificate's, an interrupted
    request's). And nothing for a body the parser reads on and drops by the same
    framing as any proxy: a ``POST``, ``PUT`` or ``PATCH`` framed by a ``Content-Length``
    within the guard's `limit` alone, sent without ``Expect: 100-continue`` (so its body
    comes whatever the answer): closing with its bytes still arriving makes the kernel
    reset the connection, which can destroy the answer before the client reads it
    (tests/api/test_balance.py). A body over the limit (413, not read on), a
    ``100-continue`` whose body may never come, and a body where a method has none
    (a probe's) still close."""
    close = closing(scope)
    if not close or any(name.lower() == b"connection" for name, _ in answer):
        return []
    length = declared_length(request.get("content-length", ""))
    drained = (
        scope["method"] in _BODY_METHODS
        and "transfer-encoding" not in request
        and not _awaits_continue(scope)
        and length is not None
        and length <= limit
    )
    return [] if drained else close


def _awaits_continue(scope: Scope) -> bool:
    """Whether any ``Expect`` field of the request asks for a ``100 Continue``. Review
    35b: the guard's dict of headers keeps the last field of a name, while both parsers
    wait for the 100 when any field asks (uvicorn's llhttp protocol field by field, h11
    over all of them joined): ``Expect: 100-continue`` then ``Expect: x`` kept the
    connection with the parser waiting for a body the next client's request became."""
    return any(
        name.lower() == b"expect" and b"100-continue" in value.lower()
        for name, value in scope["headers"]
    )


def _request_id(supplied: str) -> str:
    # A caller's id is kept only if it cannot be a card number; ours are base64url,
    # which (unlike hex UUIDs) practically never holds a long run of digits.
    # Digit groups joined by '.', '-' or '_' are a card as much as a run: the PAN
    # detector decides, with no exemption, as for every name a caller chooses.
    if (
        _REQUEST_ID.match(supplied)
        and not _LONG_DIGITS.search(supplied)
        and not name_holds_pan_like(supplied)
    ):
        return supplied
    return secrets.token_urlsafe(16)


async def _interruptible(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run `app`; if its task is cancelled before it began its answer (uvicorn cancels
    the requests still in flight at the drain deadline), answer 503
    ``request_interrupted`` and close the connection. Review 34: the request got
    uvicorn's plain-text 500 while the vault went on to finish its call (`api.routes.
    _offload`: a tokenize may commit, a relay reach its upstream), so the problem says
    it may have been done. The cancellation ends here: the answer is what it was for.
    `api.lifecycle` waits for these answers before the event loop closes."""
    began = False

    async def sending(message: Message) -> None:
        nonlocal began
        began = began or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, receive, sending)
    except asyncio.CancelledError:
        if began:
            raise
        detail = "the vault stopped before it could answer: the request may have been done"
        headers = {"connection": "close"}
        request_id = scope["state"]["request_id"]
        answer = problem_for(scope, "request_interrupted", detail, request_id, headers=headers)
        await answer(scope, receive, send)


def problem_for(
    scope: Scope, code: str, detail: str, request_id: str, headers: dict[str, str] | None = None
) -> Response:
    """The problem response for `code`, noted in the scope for the log line and audit."""
    scope.setdefault("state", {})["problem_code"] = code
    return problem(code, detail, request_id=request_id, headers=headers)
