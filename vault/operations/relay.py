"""The outbound relay: tokens become PANs inside the vault and go to an allow-listed
upstream; the answer comes back tokenized and masked.

IN PCI SCOPE, holds card data.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection

from audit.log import AuditEvent, DetailValue, Outcome
from cofre.errors import CofreError
from policies.errors import PolicyDenied, RateLimited
from policies.models import Action, IdentityPolicy, RelayRoute
from vault.errors import (
    IntegrityError,
    RelayBodyInvalid,
    Throttled,
    TokenExpired,
    TokenNotFound,
    VaultError,
)
from vault.models import CallContext, TokenizeRequest
from vault.operations.tokenize import TokenizeOperations
from vault.pan import Pan
from vault.relay import (
    RelayResult,
    get_pointer,
    mask_strings,
    set_pointer,
)


class RelayOperations(TokenizeOperations):
    """Relay operations of the vault."""

    def relay(self, ctx: CallContext, route_name: str, body: Any) -> RelayResult:
        """Send `body` to the route's upstream with the tokens at the route's pointers
        replaced by their PANs; return the upstream's status and body, with PANs at the
        route's `response_tokenize` pointers tokenized and any other PAN masked.

        The reveal is audited first: one `relay.send` entry per token (route, token id)
        commits before anything is sent, and no entry means nothing is sent; the outcome
        (upstream status or error code) is a second `relay` entry.

        Raises `PolicyDenied` (unknown route, or not this identity's), `RelayBodyInvalid`,
        `TokenNotFound`, `TokenExpired`, `AuditWriteFailed`, `StorageUnavailable` (nothing
        sent), `UpstreamTimeout`, `UpstreamUnavailable`.
        """
        rules = self._authorize(ctx, Action.RELAY)
        domains = self._policy.readable_domains(ctx.identity)
        route = self._policy.policy.relay_routes.get(route_name)
        if route is None or ctx.identity not in route.identities:
            self._write_audit(
                self._audit_event(
                    ctx,
                    Action.RELAY,
                    Outcome.DENIED,
                    details={"route": route_name[:64], "reason": "route not allowed"},
                )
            )
            raise PolicyDenied("this identity may not relay to that route")
        details: dict[str, DetailValue] = {
            "route": route_name,
            "upstream": route.upstream.split("/")[2],
        }
        try:
            outgoing, token_ids = self._transaction(
                functools.partial(
                    self._reveal_for_relay,
                    ctx=ctx,
                    rules=rules,
                    domains=domains,
                    route=route,
                    body=body,
                    details=details,
                )
            )
        except (
            RelayBodyInvalid,
            TokenNotFound,
            TokenExpired,
            IntegrityError,
            RateLimited,
            Throttled,
        ) as exc:
            # Nothing was revealed (the transaction rolled back): one entry for the refusal.
            details["error"] = exc.code
            self._write_audit(self._audit_event(ctx, Action.RELAY, Outcome.FAILED, details=details))
            raise
        # Only now, with the reveal durable in the audit log, does a byte go upstream. A
        # failure to write it (AuditWriteFailed, StorageUnavailable) raised above: fail
        # closed, nothing was sent.
        details["tokens"] = len(token_ids)
        try:
            result = self._relay_client.send(route_name, route, outgoing)
            del outgoing
            answer = self._tokenize_response(ctx, route, result.body)
        except CofreError as exc:
            details["error"] = exc.code
            self._write_audit(self._audit_event(ctx, Action.RELAY, Outcome.FAILED, details=details))
            raise
        details["status"] = result.status
        self._write_audit(self._audit_event(ctx, Action.RELAY, Outcome.SUCCESS, details=details))
        return RelayResult(result.status, answer)

    def _reveal_for_relay(
        self,
        connection: Connection,
        *,
        ctx: CallContext,
        rules: IdentityPolicy,
        domains: frozenset[str],
        route: RelayRoute,
        body: Any,
        details: Mapping[str, DetailValue],
    ) -> tuple[Any, list[str]]:
        """The body to send (a copy, the PANs in place of the tokens) and the revealed
        token ids, with one `relay.send` entry per revealed token written in the same
        transaction (one without a token id when the route reveals none). Tokens are
        read only from `domains`; the call costs one rate unit and each revealed token
        one unit of the daily detokenize quota."""
        self._charge(connection, ctx, rules, reveals=len(route.detokenize))
        outgoing = copy.deepcopy(body)  # the caller's body keeps its tokens
        token_ids: list[str] = []
        events: list[AuditEvent] = []
        for pointer in route.detokenize:
            token = get_pointer(body, pointer)
            if not isinstance(token, str):
                raise RelayBodyInvalid(f"the body has no token at {pointer}")
            row = self._live_row(connection, token, domains)
            set_pointer(outgoing, pointer, self._decrypt(row).reveal())
            token_ids.append(row.id)
            events.append(
                self._audit_event(
                    ctx,
                    "relay.send",
                    Outcome.SUCCESS,
                    token_id=row.id,
                    details={**details, "pointer": pointer[:128]},
                )
            )
        if not events:
            events.append(self._audit_event(ctx, "relay.send", Outcome.SUCCESS, details=details))
        self._audit.append_many(connection, events)
        return outgoing, token_ids

    def _tokenize_response(self, ctx: CallContext, route: RelayRoute, body: Any) -> Any:
        """`body` with the PANs at the route's `response_tokenize` pointers replaced by
        tokens, and every other PAN-like value masked. The tokens are put in after the
        masking: a token of a format that keeps BIN and last four looks like a card to
        the detector and would otherwise reach the caller unusable."""
        tokens_at: dict[str, str] = {}
        for pointer, token_format in route.response_tokenize.items():
            try:
                value = get_pointer(body, pointer)
            except RelayBodyInvalid:
                continue
            if not isinstance(value, str):
                continue
            try:
                pan = Pan(value)
            except VaultError:
                continue
            # The relayer need not (and, outside PCI scope, may not) tokenize: the vault
            # stores the card the upstream sent, in the relayer's domain.
            domain = self._policy.domain(ctx.identity)
            try:
                item = self._plan(domain, TokenizeRequest(pan=pan, format=token_format))
            except VaultError:
                continue  # not a card this format takes: masked below like any other
            (record,) = self._transaction(
                functools.partial(
                    self._store_tokens,
                    ctx=ctx,
                    domain=domain,
                    items=[item],
                    now=self._clock(),
                    batch=False,
                )
            )
            set_pointer(body, pointer, None)
            tokens_at[pointer] = record.token
        masked = mask_strings(body)
        for pointer, token in tokens_at.items():
            set_pointer(masked, pointer, token)
        return masked
