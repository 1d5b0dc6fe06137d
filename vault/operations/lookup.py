"""Lookup (a PAN's tokens in the caller's domain) and token metadata.

IN PCI SCOPE, holds card data.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Row, or_, select

from audit.log import AuditEvent, DetailValue, Outcome
from policies.formats import BUILTIN_FORMATS, MIN_CANDIDATES, hidden_candidates
from policies.models import Action, IdentityPolicy
from vault.errors import OracleSuspected, TokenExpired, TokenNotFound, VaultError
from vault.limits import oracle_bucket
from vault.models import MAX_LOOKUP_TOKENS, CallContext, LookupAnswer, TokenRecord
from vault.operations._early import EarlyRate
from vault.operations._guesses import missed_tokens
from vault.operations._items import confirm_card
from vault.pan import Pan
from vault.storage.database import as_utc
from vault.storage.schema import tokens


class LookupOperations(EarlyRate):
    """Lookup operations of the vault."""

    def lookup(
        self, ctx: CallContext, pan: Pan, token_format: str | None = None
    ) -> list[TokenRecord]:
        """`lookup_page`'s tokens."""
        return self.lookup_page(ctx, pan, token_format).tokens

    def lookup_page(
        self, ctx: CallContext, pan: Pan, token_format: str | None = None
    ) -> LookupAnswer:
        """Return the oldest live tokens of `pan` in the caller's own domain (in
        `token_format`, or all formats; each answered has an audit entry naming it),
        at most `MAX_LOOKUP_TOKENS`, and whether it has more, of formats that leave at
        least `MIN_CANDIDATES` cards behind a token of this length (as convergence
        does). It costs as many units of the rate limit as it answers tokens (one when
        it finds none), as a batch costs its items (review 46), and answers no more
        than its bucket had room for when it began (`truncated` then too). Its answer depends on
        what the vault holds, so the oracle guard counts it. Raises `PolicyDenied`,
        `InvalidPan`, `RateLimited`, `OracleSuspected`, `StorageUnavailable`,
        `HSMUnavailable`; `PolicyDenied` too for a format the caller may not use, as
        tokenize does (an empty answer would tell it nothing true)."""
        rules = self._authorize(ctx, Action.LOOKUP, token_format=token_format)
        domain = rules.domain_of(ctx.identity)
        with self._audited_refusal(ctx, Action.LOOKUP):
            self._check_luhn(pan)
            limit = rules.rate_limit
            if limit is None:
                return self._lookup(ctx, rules, domain, pan, token_format, MAX_LOOKUP_TOKENS)
            # One of the caller's lookups at a time in this process, from the read of
            # its bucket to the charge after its commit: four at once were each sized
            # from the same read, and answered a page each for one page's units (review
            # 46b). Across a node's workers (or nodes), at most one each at once. A spent
            # bucket is refused first, without waiting for the lock behind the others.
            self._refuse_spent(ctx, rules, 1)
            with self._limits.early.one_at_a_time(ctx.identity):
                # Before its HMAC: the units it may spend, one at least (`_room_for`).
                budget = self._room_for(ctx, limit, MAX_LOOKUP_TOKENS)
                return self._lookup(ctx, rules, domain, pan, token_format, budget)

    def _lookup(  # noqa: PLR0917 - lookup_page's parts, in its order
        self,
        ctx: CallContext,
        rules: IdentityPolicy,
        domain: str,
        pan: Pan,
        token_format: str | None,
        budget: int,
    ) -> LookupAnswer:
        """`lookup_page` once its caller is authorised and its budget known (at most
        `budget` tokens answered)."""
        fingerprints = self._fingerprints(pan.reveal())
        guarded = [(oracle_bucket(pan), fingerprints[-1])]
        self._refuse_suspected(ctx, rules, guarded, 1)  # before the group (fin37)

        def work(connection: Connection) -> LookupAnswer:
            now = self._clock()
            self._limits.watch(
                connection,
                ctx.identity,
                rules.oracle_guard,
                guarded,
                now,
            )
            query = select(tokens).where(
                tokens.c.domain == domain,
                tokens.c.fingerprint.in_(fingerprints),
                tokens.c.deleted_at.is_(None),
                or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > now),
                tokens.c.format.in_(self._formats_found(len(pan))),
            )
            if token_format is not None:
                query = query.where(tokens.c.format == token_format)
            # One more than a page: whether the card has more, and no more rows
            # read, decrypted or audited than the page (review 46).
            page = query.order_by(tokens.c.created_at, tokens.c.id).limit(MAX_LOOKUP_TOKENS + 1)
            rows = [
                r
                for r in connection.execute(page)
                # Both as the statement says, judged again here as before.
                if (as_utc(r.expires_at) or now + timedelta(days=1)) > now
                and self._guessable_only_widely(r.format, len(pan))
            ]
            # A page, or what the caller's bucket had room for before the HMAC if
            # less (`truncated` then too): a caller short of units is answered
            # fewer tokens, never a 429 that depends on how many the card has.
            truncated = len(rows) > budget
            rows = rows[:budget]
            # One unit here, as before, the rest after the commit (`_charge_after`):
            # a charge of them all here could be refused at the group's commit
            # (calls of the caller in flight since the room was read, two lookups
            # at once), which reruns the group's other calls (rev37c) and makes
            # the refusal depend on how many tokens the card has (review 46b).
            self._charge(connection, ctx, rules)
            for row in rows:  # found by fingerprint: the database's word (session 37)
                confirm_card(self, row, pan)
            self._audit.append_many(
                connection, self._lookup_entries(ctx, rows, truncated=truncated)
            )
            return LookupAnswer([self._record(r) for r in rows], truncated)

        try:
            answer = self._transaction(work)
        except OracleSuspected as refused:  # after its HMAC: costs its unit all the same
            self._charge_refused(ctx, rules, 1)
            self._suspect(ctx, guarded, refused)
            raise
        # What it answered, as a batch costs its items: one unit answered every
        # token of a card issued a token per call (review 46).
        self._charge_after(ctx, rules, len(answer.tokens) - 1)
        return answer

    def _lookup_entries(
        self, ctx: CallContext, rows: Sequence[Row[Any]], *, truncated: bool
    ) -> list[AuditEvent]:
        """A lookup's entries: one per token it answers, naming its id, as a batch writes
        one per item (session 40: a lookup's one entry named none, and a deleted token's
        row written back from a backup answered a lookup unseen by evidence check 6e);
        one naming none when it found none. Each says how many it answered, and
        ``truncated`` when the card had more than a page (review 46)."""
        if not rows:
            return [self._audit_event(ctx, Action.LOOKUP, Outcome.SUCCESS, details={"found": 0})]
        more: dict[str, DetailValue] = {"truncated": True} if truncated else {}
        return [
            self._audit_event(
                ctx,
                Action.LOOKUP,
                Outcome.SUCCESS,
                token_id=row.id,
                details={"found": len(rows), "found_index": index, **more},
            )
            for index, row in enumerate(rows)
        ]

    def _formats_found(self, pan_length: int) -> list[str]:
        """The formats whose tokens a lookup of a `pan_length`-digit card may find
        (`_guessable_only_widely`), for its statement: a format no longer in the policy
        is none of them, as before."""
        policy = self._policy.policy
        names = {*BUILTIN_FORMATS, *policy.formats}
        return sorted(n for n in names if self._guessable_only_widely(n, pan_length))

    def _guessable_only_widely(self, token_format: str, pan_length: int) -> bool:
        """Whether lookup may answer a token of `token_format` for a card of
        `pan_length` digits: only where the digits an attacker cannot see leave at least
        `MIN_CANDIDATES` cards, as for convergence. Below that a lookup hit would confirm
        a guess among a few hundred cards (where tokenize answers a fresh token), so
        those tokens are never found. Decided on the format and length alone, never on
        what the vault holds."""
        spec = self._policy.policy.format(token_format)
        return spec is not None and hidden_candidates(spec, pan_length) >= MIN_CANDIDATES

    def token_info(self, ctx: CallContext, token: str) -> TokenRecord:
        """Return the token's format, dates and metadata (never the PAN), for a token of
        a domain the caller may read."""
        rules = self._authorize(ctx, Action.METADATA)
        domains = self._policy.readable_domains(ctx.identity)

        def work(connection: Connection) -> TokenRecord | VaultError:
            self._charge(connection, ctx, rules)
            try:
                row = self._live_row(connection, token, domains)
            except (TokenNotFound, TokenExpired) as exc:
                return exc  # returned so that the charge commits: a miss costs a unit
            self._audit.append(
                connection,
                self._audit_event(ctx, Action.METADATA, Outcome.SUCCESS, token_id=row.id),
            )
            return self._record(row)

        with self._audited_refusal(ctx, Action.METADATA):
            self._refuse_guessed(ctx, rules, [token])
            self._refuse_spent(ctx, rules, 1)
            answer = self._transaction(work)
            if isinstance(answer, VaultError):
                self._count_missed(ctx, rules, missed_tokens(answer, [token]))
                raise answer
            return answer
