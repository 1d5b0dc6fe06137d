"""Hosted card capture: open a session (mutual TLS, operation ``capture``), then take
one card from the shopper's browser under that session.

IN PCI SCOPE, holds card data. The order of the checks is the defence:

1. the client address and then the session are charged against their rate limits in
   transactions of their own, so a refused guess still counts (brute force of a
   secret is bounded by the per-session and per-address limits); a session's wrong
   secrets and its right one are charged to a bucket each, so guesses by someone who
   knows only the id never refuse the shopper (session 37);
2. a missing or wrong secret and an unknown session are one answer
   (`CaptureUnauthorized`): nothing about the session leaks to a guess;
3. then the session's origin must still be allowed now: the creator's current policy
   names it (a reload may have taken it out since the session opened) and the current
   settings take its form (``http`` only with the development setting, which a restart
   may have turned off): else 403 `policy_denied`, audited. The fields' page and the
   preflight ask the same (`hosted_fields_session`);
4. then the origin, the expiry and the uses left;
5. then the card (Luhn, the format, the security code rule): refused before any write;
6. the token is stored, the session spent (one conditional UPDATE) and the capture
   audited in one transaction: a refused or failed capture stores nothing.

A refusal from 4 on carries the session's origin (`vault.capture.refusal_origin`), the
one origin the capture listener lets read it; one before carries none, so no origin
tells an unknown session from a wrong secret, and the listener never reads the session
again to decide (review 27).
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import Connection, Row, and_, delete, func, insert, select, update

from audit.log import DetailValue, Outcome, Source
from cofre.origins import address_key
from policies.errors import PolicyDenied, RateLimited
from policies.models import Action, RateLimit
from vault.capture import (
    CaptureResult,
    CaptureSession,
    CaptureSessionRequest,
    CardCapture,
    SessionCodeRule,
    check_security_code,
    is_session_id,
    new_secret,
    new_session_id,
    normalize_origin,
    readable_by_session_origin,
    secret_matches,
)
from vault.card import SecurityCode, normalize_expiry
from vault.errors import (
    CaptureRequestInvalid,
    CaptureSessionExpired,
    CaptureSessionUsed,
    CaptureUnauthorized,
    InvalidOrigin,
    OriginNotAllowed,
)
from vault.models import CallContext, TokenizeRequest, TokenRecord
from vault.operations.tokenize import TokenizeOperations
from vault.storage.database import as_utc
from vault.storage.schema import capture_sessions

# Who an audit entry names when a capture names no session the vault knows.
ANONYMOUS_CAPTURE: Final = "capture:unknown-session"
CREATE_SESSION: Final = "capture.session.create"


class CaptureOperations(TokenizeOperations):
    """Capture-session operations of the vault."""

    def create_capture_session(
        self,
        ctx: CallContext,
        request: CaptureSessionRequest,
        *,
        allow_http_localhost: bool = False,
    ) -> CaptureSession:
        """Open a capture session for `request.origin`, bound to the caller's token
        domain; the answer carries the client secret, which is not kept (only its hash).

        Raises `PolicyDenied` (no ``capture``, a format the caller may not use, or an
        origin not in its ``capture_origins``), `InvalidOrigin`, `InvalidTTL`,
        `CaptureRequestInvalid`, `RateLimited`, `StorageUnavailable`, `AuditWriteFailed`.
        """
        with self._audited_refusal(ctx, CREATE_SESSION):
            request.check()
            rules = self._authorize(ctx, Action.CAPTURE, token_format=request.formats[0])
            for other in request.formats[1:]:
                self._authorize(ctx, Action.CAPTURE, token_format=other)
            origin = normalize_origin(
                request.origin, allow_http_localhost=allow_http_localhost, frame_ancestor=True
            )
            # The policy refuses `capture` without origins; a missing list is still
            # no origin here (fail closed), never "any".
            if origin not in _allowed(rules.capture_origins or frozenset(), allow_http_localhost):
                reason = "this identity may not open capture sessions for that origin"
                details: dict[str, DetailValue] = {"reason": reason, "origin": origin}
                self._write_audit(
                    self._audit_event(ctx, Action.CAPTURE, Outcome.DENIED, details=details)
                )
                raise PolicyDenied(reason)
            session_id = new_session_id()
            secret, secret_hash = new_secret()
            self._refuse_spent(ctx, rules, 1)
            # The identity's own bound on sessions, whatever its `rate_limit` (session
            # 38): read before the transaction, then charged and counted in it.
            bound, sessions = rules.capture_sessions, _sessions_key(ctx.identity)
            self._refuse_spent_key(sessions, bound.rate(), 1)
            with self._storage(), self._reader.connect() as connection:
                _refuse_past_live(connection, ctx.identity, bound.max_live, self._clock())

            def work(connection: Connection) -> datetime:
                now = self._clock()
                self._charge(connection, ctx, rules)
                self._limits.charge_rate(
                    connection,
                    sessions,
                    bound.rate(),
                    1,
                    now.timestamp(),
                    clock=lambda: self._clock().timestamp(),
                    deferrable=True,
                )
                _refuse_past_live(connection, ctx.identity, bound.max_live, now)
                expires = now + timedelta(seconds=request.ttl_seconds)
                connection.execute(
                    insert(capture_sessions).values(
                        id=session_id,
                        secret_hash=secret_hash,
                        origin=origin,
                        formats=json.dumps(list(request.formats)),
                        security_code=request.security_code.value,
                        owner=ctx.identity,
                        domain=rules.domain_of(ctx.identity),
                        created_at=now,
                        expires_at=expires,
                        max_uses=request.max_uses,
                        uses=0,
                    )
                )
                self._audit.append(
                    connection,
                    self._audit_event(
                        ctx,
                        CREATE_SESSION,
                        Outcome.SUCCESS,
                        details={
                            "session": session_id,
                            "origin": origin,
                            "formats": ",".join(request.formats),
                            "ttl_seconds": request.ttl_seconds,
                            "max_uses": request.max_uses,
                            "security_code": request.security_code.value,
                        },
                    ),
                )
                return expires

            expires_at = self._transaction(work)
        return CaptureSession(
            session_id=session_id,
            origin=origin,
            formats=request.formats,
            expires_at=expires_at,
            max_uses=request.max_uses,
            security_code=request.security_code,
            secret=secret,
        )

    def hosted_fields_session(
        self,
        session_id: str,
        *,
        origin: str | None = None,
        allow_http_localhost: bool = False,
        client_address: str = "unknown",
        request_id: str = "",
        audit: bool = True,
    ) -> tuple[str, SessionCodeRule] | None:
        """The origin a live session with captures left is bound to (the only one that
        may frame its hosted fields) and its security-code rule, or None; with `origin`
        (a preflight's ``Origin``), None too when the session is bound to another, so
        only the session's own origin reaches the check below. Needs no secret: it tells
        nothing the session's own page does not show. One read of the session.

        Raises `PolicyDenied` (audited ``capture`` denied, naming `client_address` and
        `request`) when the session's origin is not allowed now: its creator's policy
        no longer names it, or `allow_http_localhost` (the current setting) no longer
        takes an ``http`` origin (`_refuse_an_origin_not_allowed_now`); with `audit`
        false it writes no entry (the capture listener past its limit of refusal
        entries counts it instead: the page needs no secret, review 28b C1); and
        `StorageUnavailable`, `AuditWriteFailed`."""
        row = self._session_row(session_id)
        if row is None or row.uses >= row.max_uses:
            return None
        expires = as_utc(row.expires_at)
        if expires is None or expires <= self._clock():
            return None
        if origin is not None and origin != row.origin:
            return None
        owner = CallContext(
            identity=str(row.owner), request_id=request_id, source=_source(client_address)
        )
        details: dict[str, DetailValue] = {
            "client": client_address[:64],
            "session": str(row.id),
            "request": "preflight" if origin is not None else "hosted_fields",
        }
        self._refuse_an_origin_not_allowed_now(
            owner, row, details, allow_http_localhost, audit=audit
        )
        return str(row.origin), SessionCodeRule(row.security_code)

    def capture_card(
        self,
        card: CardCapture,
        *,
        per_session: RateLimit,
        per_address: RateLimit,
        request_id: str = "",
        audit_anonymous: bool = True,
        allow_http_localhost: bool = False,
    ) -> CaptureResult:
        """Tokenize the card of a hosted-fields capture into the session creator's
        domain, spend one use of the session and audit it, in one transaction.

        Raises `RateLimited` (per client address, then per session), `CaptureUnauthorized`
        (unknown session, missing or wrong secret), `OriginNotAllowed`,
        `CaptureSessionExpired`, `CaptureSessionUsed`, `InvalidPan`,
        `FormatNotApplicable`, `SecurityCodeNotAllowed`, `CaptureRequestInvalid`,
        `PolicyDenied` (the creator lost ``capture`` or the format, or the session's
        origin is not allowed now: its policy no longer names it, or
        `allow_http_localhost`, the setting as it is now, no longer takes it), and what
        tokenize raises. Every refusal is audited, but with `audit_anonymous` false
        those before the secret matched (the per-address limit, an unknown session, a
        wrong secret and its session's limit of them, atk48c):
        the capture listener then counts them itself, past its limit of refusal entries
        (review 30). None stores anything. A refusal raised once the secret matched and
        the session's origin is still allowed carries that origin
        (`vault.capture.refusal_origin`).
        """
        source = _source(card.client_address)
        anonymous = CallContext(identity=ANONYMOUS_CAPTURE, request_id=request_id, source=source)
        details: dict[str, DetailValue] = {"client": card.client_address[:64]}
        audited = self._audited_refusal(anonymous, Action.CAPTURE)
        with audited if audit_anonymous else contextlib.nullcontext():
            self.charge_rate(f"capture-address {address_key(card.client_address)}", per_address)
            session = self._session_row(card.session_id)
            if session is None:
                raise CaptureUnauthorized("unknown capture session or wrong client secret")
        owner = CallContext(identity=str(session.owner), request_id=request_id, source=source)
        details["session"] = str(session.id)
        # A wrong secret is refused before the session is the caller's: past the
        # listener's limit of refusal entries it is counted, as an unknown session is
        # (atk48c: anyone who loaded the shop's checkout once wrote one entry per wrong
        # secret for its session's id, from as many addresses as they had).
        wrong = self._audited_refusal(owner, Action.CAPTURE)
        with wrong if audit_anonymous else contextlib.nullcontext():
            self._refuse_a_wrong_secret(card, session, per_session)
        with self._audited_refusal(owner, Action.CAPTURE):
            self.charge_rate(f"capture-holder {session.id}", per_session)
        # Not readable by the origin either: the shop no longer vouches for it.
        self._refuse_an_origin_not_allowed_now(owner, session, details, allow_http_localhost)
        with readable_by_session_origin(str(session.origin)):
            return self._capture_checked(card, owner, session, details)

    def _capture_checked(
        self,
        card: CardCapture,
        owner: CallContext,
        session: Row[Any],
        details: dict[str, DetailValue],
    ) -> CaptureResult:
        """`capture_card` once the secret matched and the origin is still allowed."""
        with self._audited_refusal(owner, Action.CAPTURE):
            token_format = self._check_session(card, session)
            code = None if not card.security_code else SecurityCode(card.security_code)

        def spend(connection: Connection, stored: list[TokenRecord]) -> None:
            self._spend_session(connection, owner, session, stored[0], details)

        # Tokenize checks the card (Luhn, the format, the expiry, the name, the code)
        # and audits its own refusals under ``capture`` with the creator as actor.
        request = TokenizeRequest(
            pan=card.pan,
            format=token_format,
            expiry=card.expiry,
            cardholder_name=card.name,
            security_code=code,
        )
        # A capture asks no life of its own: a new token is kept until deleted, and one
        # the shop holds keeps its expiry and details (`shopper`, R28-3).
        pending = self._tokenize(
            owner, [request], batch=False, action=Action.CAPTURE, within=spend, shopper=True
        )
        record = pending.finish()[0]
        shown = None if card.expiry is None else normalize_expiry(card.expiry, self._clock())
        return CaptureResult(token=record, masked=card.pan.masked(), expiry=shown)

    def _refuse_an_origin_not_allowed_now(
        self,
        owner: CallContext,
        session: Row[Any],
        details: dict[str, DetailValue],
        allow_http_localhost: bool,
        *,
        audit: bool = True,
    ) -> None:
        """Raise `PolicyDenied` (audited, as the refusal to open such a session is) when
        the session's origin is not one a session could be opened for now: the
        creator's current policy no longer names it (an operator who takes a phishing
        origin out of `capture_origins` and reloads stops the sessions already open for
        it too, review 27), or it is an ``http`` origin and the vault now runs without
        the development setting that admitted it (a session opened before a restart
        with the setting off). The capture, its preflight and its fields' page ask it
        alike; no read of the database (the policy and the setting are in memory).
        With `audit` false neither this denial nor a lost ``capture`` grant writes an
        entry (`hosted_fields_session`)."""
        rules = self._authorize(owner, Action.CAPTURE, audited=audit)
        named = rules.capture_origins or frozenset()
        # `_allowed` drops the entries the current setting refuses (http), so one
        # membership test asks both questions, as opening a session does.
        if str(session.origin) in _allowed(named, allow_http_localhost):
            return
        reason = "the policy no longer names this capture session's origin"
        if str(session.origin) in _allowed(named, allow_http_localhost=True):
            reason = (
                "this capture session's http origin needs the development setting "
                "COFRE_CAPTURE__ALLOW_HTTP_LOCALHOST, which is now off"
            )
        if audit:
            denied = {**details, "reason": reason, "origin": str(session.origin)}
            event = self._audit_event(owner, Action.CAPTURE, Outcome.DENIED, details=denied)
            self._write_audit(event)
        raise PolicyDenied(reason)

    def _refuse_a_wrong_secret(
        self, card: CardCapture, session: Row[Any], limit: RateLimit
    ) -> None:
        """Charge the session's bucket of wrong secrets and raise `CaptureUnauthorized`
        if `card`'s secret is wrong; the secret's holder is charged a bucket of its own
        after (`capture_card`). Wrong secrets and the holder have a bucket each (session
        37): charged before the secret was compared, one bucket refused the right secret
        once wrong ones had spent it, so someone who learnt only the id (a log of the
        fields' path) blocked the shopper's checkout for the session's life, one guess
        each time it refilled. Guessing stays bounded by its own bucket and the
        address's, against a 256-bit secret."""
        if secret_matches(card.secret, session.secret_hash):
            return
        self.charge_rate(f"capture-session {session.id}", limit)
        raise CaptureUnauthorized("unknown capture session or wrong client secret")

    def _session_row(self, session_id: str) -> Row[Any] | None:
        if not is_session_id(session_id):
            return None
        with self._storage(), self._engine.connect() as connection:
            return connection.execute(
                select(capture_sessions).where(capture_sessions.c.id == session_id)
            ).first()

    def _check_session(self, card: CardCapture, session: Row[Any]) -> str:
        """Check the session's origin, expiry, uses and rules against `card` (its secret
        matched); return the token format to use. Raises the refusal."""
        if not card.frame and card.origin != session.origin:
            raise OriginNotAllowed("this capture session is bound to another origin")
        expires = as_utc(session.expires_at)
        if expires is None or expires <= self._clock():
            raise CaptureSessionExpired("this capture session has expired; open a new one")
        if session.uses >= session.max_uses:
            raise CaptureSessionUsed("this capture session is used up; open a new one")
        formats = json.loads(session.formats)
        token_format = card.token_format or formats[0]
        if token_format not in formats:
            raise CaptureRequestInvalid("this capture session does not allow that token format")
        check_security_code(SessionCodeRule(session.security_code), card.security_code)
        return str(token_format)

    def _spend_session(
        self,
        connection: Connection,
        owner: CallContext,
        session: Row[Any],
        record: TokenRecord,
        details: dict[str, DetailValue],
    ) -> None:
        """Spend one use (a conditional UPDATE, so two captures cannot both take the
        last one) and audit the capture, in the token's transaction."""
        now = self._clock()
        spent = connection.execute(
            update(capture_sessions)
            .where(
                and_(
                    capture_sessions.c.id == session.id,
                    capture_sessions.c.uses < capture_sessions.c.max_uses,
                    capture_sessions.c.expires_at > now,
                )
            )
            .values(uses=capture_sessions.c.uses + 1, last_token_id=record.token_id)
        )
        if spent.rowcount != 1:
            raise CaptureSessionUsed("this capture session is used up; open a new one")
        self._audit.append(
            connection,
            self._audit_event(
                owner,
                Action.CAPTURE,
                Outcome.SUCCESS,
                token_id=record.token_id,
                details={
                    **details,
                    "origin": str(session.origin),
                    "format": record.format,
                },
            ),
        )


def _sessions_key(identity: str) -> str:
    """The rate bucket of the sessions `identity` opens (`CaptureSessionLimit`): apart
    from its own `rate_limit`, and from every capture-listener key (``capture-address``,
    ``capture-session``, ``capture-holder``); no identity starts with ``capture-``
    (a SAN URI's scheme comes first)."""
    return f"capture-sessions {identity}"


def _refuse_past_live(connection: Connection, owner: str, max_live: int, now: datetime) -> None:
    """Raise `RateLimited` when `owner` holds `max_live` sessions open (not expired,
    captures left), with the seconds until the first of them expires. Through the
    index on ``expires_at``: the sessions not yet expired, of every identity, which the
    bounds keep few. Two calls at once on two nodes may both pass, one over the bound
    each (their transactions do not see each other's insert)."""
    live, first_end = connection.execute(
        select(func.count(), func.min(capture_sessions.c.expires_at)).where(
            capture_sessions.c.expires_at > now,
            capture_sessions.c.owner == owner,
            capture_sessions.c.uses < capture_sessions.c.max_uses,
        )
    ).one()
    if int(live) < max_live:
        return
    ends = as_utc(first_end) or now
    raise RateLimited(
        f"this identity holds {int(live)} capture sessions open, its most at once "
        "(the policy's capture_sessions.max_live); a place frees when one is used or "
        "expires",
        max((ends - now).total_seconds(), 1.0),
    )


def _source(address: str) -> Source | None:
    """A browser's origination: its address (no client certificate on the capture
    listener), in every entry of its capture, refusals included."""
    return Source(address=address) if address and address != "unknown" else None


def purge_capture_sessions(connection: Connection, now: datetime) -> int:
    """Delete sessions that expired more than an hour ago (they hold no card data; the
    audit log keeps their story); return how many."""
    removed = connection.execute(
        delete(capture_sessions).where(capture_sessions.c.expires_at < now - timedelta(hours=1))
    ).rowcount
    return int(removed)


def _allowed(origins: frozenset[str], allow_http_localhost: bool) -> set[str]:
    """A policy's `capture_origins` as `normalize_origin` spells them; one it refuses is
    no origin a session could name, and is left out."""
    allowed = set()
    for origin in origins:
        with contextlib.suppress(InvalidOrigin):
            allowed.add(
                normalize_origin(
                    origin, allow_http_localhost=allow_http_localhost, frame_ancestor=True
                )
            )
    return allowed
