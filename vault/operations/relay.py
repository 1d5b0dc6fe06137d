"""The outbound relay: tokens become PANs inside the vault and go to an allow-listed
upstream; the answer comes back tokenized and masked.

IN PCI SCOPE, holds card data.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
from collections.abc import Callable, Mapping
from typing import Any, Final

from sqlalchemy import Connection

from audit.log import AuditEvent, DetailValue, Outcome
from cofre.errors import CofreError
from policies.engine import PolicyEngine
from policies.errors import PolicyDenied, RateLimited
from policies.models import Action, CardPointers, IdentityPolicy, RelayRoute
from vault._relay_details import CallerGuesses
from vault._relay_scan import Sent, scanned_answer
from vault.card import format_expiry
from vault.errors import (
    IntegrityError,
    OracleSuspected,
    QuotaExceeded,
    RelayBodyInvalid,
    Throttled,
    TokenExpired,
    TokenNotFound,
    UpstreamBusy,
    UpstreamUnavailable,
    VaultError,
)
from vault.models import CallContext, TokenizeRequest, TokenRecord
from vault.operations._items import _Item
from vault.operations.tokenize import TokenizeOperations
from vault.pan import Pan
from vault.relay import (
    MAX_DEPTH,
    RelayResult,
    add_pointer,
    caller_guesses,
    drop_pointer,
    get_pointer,
    nested_deeper_than,
    set_pointer,
)

# The layouts of an expiry the vault sent (whole or as month and year apart) that are
# withheld from the answer whatever layout it went in; MMYY only when it went so, as four
# digits alone are too common.
_ECHOED_LAYOUTS: Final = ("MM/YY", "MM/YYYY", "YYYY-MM")


def _route_tokens(route: RelayRoute, body: Any) -> list[str]:
    """The tokens `body` holds where `route` reads one (its `detokenize` pointers and
    its card's number). On a miss all of them count as guesses: which one missed is
    not told apart (a route reads one token, or a few)."""
    pointers = [*route.detokenize, *([] if route.card is None else [route.card.number])]
    found = []
    for pointer in pointers:
        with contextlib.suppress(RelayBodyInvalid):
            if isinstance(token := get_pointer(body, pointer), str):
                found.append(token)
    return found


def _refuse_tokenless(route: RelayRoute, body: Any) -> None:
    """Raise `RelayBodyInvalid` unless `body` holds a token (text) at each pointer the
    route reads one from, and nothing where the vault puts a card's details. Checked
    before the commit group (review rev37c): raised inside it, once the reveal found a
    pointer empty or a detail sent, the refusal rolled back the call's charge (so it
    cost nothing and the early check never refused the next) and the whole group,
    every other caller's operation in it run again: one route let a certificate rerun
    every group it reached, without limit."""
    for pointer in route.detokenize:
        if not isinstance(get_pointer(body, pointer), str):
            raise RelayBodyInvalid(f"the body has no token at {pointer}")
    if route.card is None:
        return
    if not isinstance(get_pointer(body, route.card.number), str):
        raise RelayBodyInvalid(f"the body has no card token at {route.card.number}")
    for pointer in route.card.details().values():  # refused whatever the token holds
        _refuse_unparented(body, pointer)
        try:
            get_pointer(body, pointer)
        except RelayBodyInvalid:
            continue
        raise RelayBodyInvalid(
            f"the body already has a value at {pointer}, where the vault puts the card's "
            "details: send only the card token"
        )


def _refuse_unparented(body: Any, pointer: str) -> None:
    """Raise `RelayBodyInvalid` unless `body` has an object where the route puts the
    card detail at `pointer` (`add_pointer` puts it there). Whatever the token holds
    (fin37): refused only for a token holding the detail, inside the transaction, such
    a body rolled back its group uncharged as those above did, and its answer told
    whether the token held the detail. The body sent differs from `body` only in text
    members, so what is an object in one is in the other."""
    parent = pointer[: pointer.rfind("/")]
    try:
        holder = get_pointer(body, parent) if parent else body
    except RelayBodyInvalid:
        holder = None
    if not isinstance(holder, dict):
        raise RelayBodyInvalid(f"the body has no object to hold {pointer}")


class RelayOperations(TokenizeOperations):
    """Relay operations of the vault."""

    def replace_policy(
        self, policy: PolicyEngine, *, actor: str, source: str, text: str | None = None
    ) -> None:
        """`VaultCore.replace_policy`, then the relay clients of the routes the new
        policy removed, or whose trust it changed, retired at once (review 35: kept
        open, with their connections, until the vault stopped)."""
        super().replace_policy(policy, actor=actor, source=source, text=text)
        self._relay_client.retire_stale(policy.policy.relay_routes)

    def relay(self, ctx: CallContext, route_name: str, body: Any) -> RelayResult:
        """Send `body` to the route's upstream with the tokens at the route's pointers
        replaced by their PANs; return the upstream's status and body, with PANs at the
        route's `response_tokenize` pointers tokenized and any other PAN masked.

        The reveal is audited first: one `relay.send` entry per token (route, token id)
        commits before anything is sent, and no entry means nothing is sent; the outcome
        (upstream status or error code) is a second `relay` entry.

        Raises `PolicyDenied` (unknown route, or not this identity's), `RelayBodyInvalid`,
        `TokenNotFound`, `TokenExpired`, `UpstreamBusy` (the route's `max_in_flight`
        relays are under way), `AuditWriteFailed`, `StorageUnavailable` (nothing sent),
        `UpstreamTimeout`, `UpstreamUnavailable`.
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
        with contextlib.ExitStack() as held:
            try:
                _refuse_deep(body)
                _refuse_tokenless(route, body)
                guessed = _route_tokens(route, body)
                self._refuse_guessed(ctx, rules, guessed)
                reveals = len(route.detokenize) + (0 if route.card is None else 1)
                self._refuse_spent(ctx, rules, 1, reveals=reveals)
                # A place among the route's relays under way, held until its answer.
                try:
                    held.enter_context(self._relay_client.slot(route_name, route, ctx.identity))
                except UpstreamBusy as busy:
                    self._refuse_busy(ctx, rules, busy, details)
                    raise
                # Read before the commit group (atk49b: the guesses are read in every
                # decoding the answer's detail checks use, up to a few hundred ms for a
                # hostile 64 KiB body, which the group's other operations would wait for).
                guesses = _guesses_of(route, body)
                revealed = self._transaction(
                    functools.partial(
                        self._reveal_or_miss,
                        ctx=ctx,
                        rules=rules,
                        domains=domains,
                        route=route,
                        body=body,
                        details=details,
                        guesses=guesses,
                    )
                )
                if isinstance(revealed, TokenNotFound | TokenExpired):
                    if isinstance(revealed, TokenNotFound):  # counted: sweeps (session 37)
                        self._count_missed(ctx, rules, guessed)
                    raise revealed
                outgoing, token_ids, sent = revealed
            except (
                RelayBodyInvalid,
                TokenNotFound,
                TokenExpired,
                IntegrityError,
                RateLimited,
                Throttled,
            ) as exc:
                # Nothing was revealed (the transaction rolled back): one entry for the refusal.
                if isinstance(exc, QuotaExceeded):
                    self._limits.learn_quota(ctx.identity, exc)
                details["error"] = exc.code
                self._write_audit(
                    self._audit_event(ctx, Action.RELAY, Outcome.FAILED, details=details)
                )
                raise
            # Only now, with the reveal durable in the audit log, does a byte go upstream. A
            # failure to write it (AuditWriteFailed, StorageUnavailable) raised above: fail
            # closed, nothing was sent.
            details["tokens"] = len(token_ids)
            try:
                result = _send(self._relay_client.send, route_name, route, outgoing)
                del outgoing
                if route.card is not None and route.card.security_code is not None:
                    # An upstream that echoes the code must not hand it to the caller.
                    drop_pointer(result.body, route.card.security_code)
                # ... nor anywhere else: errors often echo the whole request (review 26).
                answer = self._tokenize_response(
                    ctx, rules, route, result.body, sent=sent, details=details
                )
                del sent
            except CofreError as exc:
                details["error"] = exc.code
                self._write_audit(
                    self._audit_event(ctx, Action.RELAY, Outcome.FAILED, details=details)
                )
                raise
            details["status"] = result.status
            self._write_audit(
                self._audit_event(ctx, Action.RELAY, Outcome.SUCCESS, details=details)
            )
            return RelayResult(result.status, answer)

    def _refuse_busy(
        self,
        ctx: CallContext,
        rules: IdentityPolicy,
        busy: UpstreamBusy,
        details: Mapping[str, DetailValue],
    ) -> None:
        """Charge a relay refused `busy` one unit of the caller's rate limit, as a relay
        costs, with its `relay` entry in the same transaction. Raises `RateLimited`
        (nothing written; the caller audits that refusal instead). Review 40: charged to
        the caller's refusal bucket instead, one busy refusal put a caller in debt there,
        and then every request it had in flight (its relays waiting on the stalled
        upstream that filled the route) counted against it: its next call to any route,
        within its rate limit, was held back 429."""
        event = self._audit_event(
            ctx, Action.RELAY, Outcome.FAILED, details={**details, "error": busy.code}
        )

        def refuse(connection: Connection) -> None:
            self._charge(connection, ctx, rules)
            self._audit.append_many(connection, [event])

        self._transaction(refuse)

    def _reveal_or_miss(
        self, connection: Connection, **parts: Any
    ) -> tuple[Any, list[str], Sent] | TokenNotFound | TokenExpired:
        """`_reveal_for_relay`, or the miss it raised, returned so that the transaction
        commits the call's rate charge (review 30: a raised miss rolled it back, so
        relays of unknown tokens cost nothing and each wrote an entry; detokenize
        returns its misses the same way)."""
        try:
            return self._reveal_for_relay(connection, **parts)
        except (TokenNotFound, TokenExpired) as exc:
            return exc

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
        guesses: CallerGuesses | None,
    ) -> tuple[Any, list[str], Sent]:
        """The body to send (a copy, the PANs in place of the tokens), the revealed
        token ids and the card details sent beside a PAN (`withhold_sent` takes them
        out of the answer), with one `relay.send` entry per revealed token written in
        the same transaction (one without a token id when the route reveals none). Tokens are
        read only from `domains`; the call costs one rate unit and each revealed token
        one unit of the daily detokenize quota."""
        card_reveals = 0 if route.card is None else 1
        self._charge(connection, ctx, rules, reveals=len(route.detokenize) + card_reveals)
        outgoing = copy.deepcopy(body)  # the caller's body keeps its tokens
        token_ids: list[str] = []
        sent: list[str] = []
        sent_pans: list[str] = []
        month_years: list[tuple[str, tuple[str, str]]] = []
        events: list[AuditEvent] = []
        for pointer in route.detokenize:
            token = get_pointer(body, pointer)
            if not isinstance(token, str):
                raise RelayBodyInvalid(f"the body has no token at {pointer}")
            # Share-locked as a detokenize's (session 31): a delete on another node waits
            # for this `relay.send` entry's commit, and one that came first is seen.
            row = self._live_row(connection, token, domains, shared=True)
            pan = self._decrypt(row).reveal()
            set_pointer(outgoing, pointer, pan)
            sent_pans.append(pan)
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
        if route.card is not None:
            token_id, event_details = self._put_card(
                connection,
                route.card,
                body,
                outgoing,
                domains,
                sent_values=sent,
                month_years=month_years,
            )
            sent_pans.append(get_pointer(outgoing, route.card.number))
            token_ids.append(token_id)
            events.append(
                self._audit_event(
                    ctx,
                    "relay.send",
                    Outcome.SUCCESS,
                    token_id=token_id,
                    details={**details, **event_details},
                )
            )
        if not events:
            events.append(self._audit_event(ctx, "relay.send", Outcome.SUCCESS, details=details))
        self._audit.append_many(connection, events)
        return outgoing, token_ids, Sent(sent, sent_pans, month_years, guesses if sent else None)

    def _put_card(
        self,
        connection: Connection,
        card: CardPointers,
        body: Any,
        outgoing: Any,
        domains: frozenset[str],
        *,
        sent_values: list[str],
        month_years: list[tuple[str, tuple[str, str]]],
    ) -> tuple[str, dict[str, DetailValue]]:
        """Put the card of the token at `card.number` into `outgoing`: the PAN, and the
        expiry, name and held security code where the route names them. The code is
        taken (deleted) in this transaction, the one that writes the `relay.send` entry:
        if that entry is not written, the code stays and nothing is sent; once it is,
        no second call gets the code. Returns the token id and what the entry says
        (which details went, never their values); adds to `sent_values` the code, name
        and expiry that went, and the expiry in `_ECHOED_LAYOUTS` too. A month or a year
        alone is not added: two digits would take every such number out of the answer;
        sent apart, the pair goes to `month_years`, withheld where one object of the
        answer holds both (R31-1)."""
        token = get_pointer(body, card.number)
        if not isinstance(token, str):
            raise RelayBodyInvalid(f"the body has no card token at {card.number}")
        row = self._live_row(connection, token, domains, shared=True)  # as above
        bundle = self._open_card(row)
        set_pointer(outgoing, card.number, bundle.pan.reveal())
        details = card.details()
        code = None
        if "security_code" in details:
            code = self._codes.take(connection, token_id=row.id, token=row.token, now=self._clock())
        values: dict[str, str | None] = {
            "security_code": None if code is None else code.reveal(),
            "cardholder_name": bundle.cardholder_name,
        }
        if bundle.expiry is not None:
            values["expiry"] = format_expiry(bundle.expiry, card.expiry_format)
            values["expiry_month"] = format_expiry(bundle.expiry, "MM")
            values["expiry_year"] = format_expiry(
                bundle.expiry, "YY" if card.expiry_year_digits == 2 else "YYYY"
            )
        sent = []
        for what, pointer in details.items():
            value = values.get(what)
            if value is None:
                # Nothing to put (no code held, no name): the member is left out, and
                # one the caller sent is refused all the same.
                try:
                    get_pointer(body, pointer)
                except RelayBodyInvalid:
                    continue
                raise RelayBodyInvalid(
                    f"the body already has a value at {pointer}, where the vault puts the "
                    "card's details: send only the card token"
                )
            add_pointer(outgoing, pointer, value)
            sent.append(what)
            if what in ("security_code", "cardholder_name", "expiry"):
                sent_values.append(value)
        apart = {"expiry_month", "expiry_year"} <= set(sent)
        if bundle.expiry is not None and apart:
            year = format_expiry(bundle.expiry, "YYYY")
            month_years.append((format_expiry(bundle.expiry, "MM"), (year[-2:], year)))
        if bundle.expiry is not None and (apart or "expiry" in sent):
            # Acquirers echo an expiry in a layout of their own: one sent apart came back
            # as "07/31" in one string, one sent "MM/YY" as "2031-07" (review 31b).
            sent_values.extend(format_expiry(bundle.expiry, x) for x in _ECHOED_LAYOUTS)
        return row.id, {
            "pointer": card.number[:128],
            "card": ",".join(["number", *sent]),
            "security_code": "used" if code is not None else "none",
        }

    def _store_answered(
        self,
        connection: Connection,
        *,
        ctx: CallContext,
        rules: IdentityPolicy,
        domain: str,
        item: _Item,
    ) -> list[TokenRecord]:
        """Store the card an upstream answered with (`response_tokenize`) as a tokenize
        stores it, counted by the oracle guard as a tokenize is: an upstream that echoes
        what the relay body carried would otherwise tokenize cards of the caller's
        choosing, compared with a token it holds, without a limit. No rate unit: the
        relay call paid one, and a token the caller's flow expects would turn masked
        at the edge of its limit. Raises `OracleSuspected` (nothing stored)."""
        now = self._clock()
        if item.guard is not None:
            self._limits.watch(connection, ctx.identity, rules.oracle_guard, [item.guard], now)
        return self._store_tokens(connection, ctx, domain, [item], now, batch=False)

    def _tokenize_response(
        self,
        ctx: CallContext,
        rules: IdentityPolicy,
        route: RelayRoute,
        body: Any,
        *,
        sent: Sent,
        details: dict[str, DetailValue],
    ) -> Any:
        """`body` with the PANs at the route's `response_tokenize` pointers replaced by
        tokens, every other PAN-like value masked, then a PAN the call sent split over
        an object's values withheld (`withhold_split_pans`), or echoed in a shape the
        detector does not know (`withhold_echoed_pans`), then the card details in
        `sent` (`withhold_sent`; both after the masking, as a code withheld first could
        split a spaced PAN the masking then misses). The tokens are put in last: a
        token of a format that keeps BIN and last four looks like a card to the
        detector and would otherwise reach the caller unusable, and a digit group of a
        UUID token could equal a code."""
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
                (item,) = self._plan(
                    domain, [TokenizeRequest(pan=pan, format=token_format)], batch=False
                )
            except VaultError:
                continue  # not a card this format takes: masked below like any other
            guarded = [] if item.guard is None else [item.guard]
            try:
                self._refuse_suspected(ctx, rules, guarded, 0)  # before the group (fin37)
                (record,) = self._transaction(
                    functools.partial(
                        self._store_answered, ctx=ctx, rules=rules, domain=domain, item=item
                    )
                )
            except OracleSuspected as exc:
                self._suspect(ctx, guarded, exc)
                # The call has gone upstream (an authorization may stand): its answer is
                # given, this card masked in it like any other PAN.
                details["response_tokenize"] = exc.code
                continue
            set_pointer(body, pointer, None)
            tokens_at[pointer] = record.token
        masked = scanned_answer(body, sent)
        for pointer, token in tokens_at.items():
            set_pointer(masked, pointer, token)
        return masked


def _guesses_of(route: RelayRoute, body: Any) -> CallerGuesses | None:
    """`caller_guesses` of `body` for a route that may send a card detail (a code, a
    name, an expiry), else None; the tokens the vault replaces are not guesses."""
    if route.card is None or not route.card.details():
        return None
    tokens = {get_pointer(body, p) for p in route.detokenize}
    tokens.add(get_pointer(body, route.card.number))
    return caller_guesses(body, tokens)


def _refuse_deep(body: Any) -> None:
    """Raise `RelayBodyInvalid` for a body nested deeper than `MAX_DEPTH`: copying it
    (and masking an answer like it) would exhaust Python's recursion, a 500; or for one
    that cannot be sent as JSON.

    Review 28 (R28-1): the parser takes ``NaN``, ``Infinity``, ``1e999`` (read as an
    infinite float) and a lone surrogate escape (``"\\ud800"``), which httpx then fails to
    encode (``allow_nan=False``, UTF-8) after the card was revealed and the
    ``relay.send`` entry committed: a 500 with no outcome entry. Encoded here as httpx
    encodes it, before any reveal; the PANs and card details put in later are plain
    digits and text. The cost is one encoding of a body the API already bounds in size."""
    if nested_deeper_than(body):
        raise RelayBodyInvalid(f"the body nests deeper than {MAX_DEPTH} levels")
    try:
        json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (ValueError, TypeError):  # UnicodeEncodeError is a ValueError
        raise RelayBodyInvalid(
            "the body cannot be sent as JSON: it holds NaN, an infinite number or an "
            "unpaired surrogate"
        ) from None


def _send(
    send: Callable[[str, RelayRoute, Any], RelayResult], name: str, route: RelayRoute, body: Any
) -> RelayResult:
    """`send(name, route, body)`, with any failure that is not the vault's own error
    raised as `UpstreamUnavailable`: the card was revealed and its ``relay.send`` entry
    committed, so the relay's outcome must be audited, never a bare 500 (review 28: an
    encoding error of httpx was one). Whether the upstream got anything is unknown."""
    try:
        return send(name, route, body)
    except CofreError:
        raise
    except Exception as exc:  # noqa: BLE001 - audited as the relay's outcome, then raised
        raise UpstreamUnavailable(
            f"the relay of route {name!r} failed ({type(exc).__name__}): the upstream's "
            "answer is unknown"
        ) from None
