"""Lookup (a PAN's tokens in the caller's domain) and token metadata.

IN PCI SCOPE, holds card data.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Row, select

from audit.log import AuditEvent, Outcome
from policies.formats import MIN_CANDIDATES, hidden_candidates
from policies.models import Action
from vault.errors import OracleSuspected, TokenExpired, TokenNotFound, VaultError
from vault.limits import oracle_bucket
from vault.models import CallContext, TokenRecord
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
        """Return the live tokens of `pan` in the caller's own domain (in `token_format`,
        or all formats; each answered has an audit entry naming it) whose format leaves
        at least `MIN_CANDIDATES` cards behind a token of this length (as convergence
        does). Its answer depends on what the vault holds, so the oracle guard counts
        it. Raises `PolicyDenied`, `InvalidPan`, `RateLimited`, `OracleSuspected`,
        `StorageUnavailable`, `HSMUnavailable`; `PolicyDenied` too for a format the
        caller may not use, as tokenize does (an empty answer would tell it nothing
        true)."""
        rules = self._authorize(ctx, Action.LOOKUP, token_format=token_format)
        domain = rules.domain_of(ctx.identity)
        with self._audited_refusal(ctx, Action.LOOKUP):
            self._check_luhn(pan)
            self._refuse_spent(ctx, rules, 1)  # before its HMAC
            fingerprints = self._fingerprints(pan.reveal())
            guarded = [(oracle_bucket(pan), fingerprints[-1])]
            self._refuse_suspected(ctx, rules, guarded, 1)  # before the group (fin37)

            def work(connection: Connection) -> list[TokenRecord]:
                now = self._clock()
                self._charge(connection, ctx, rules)
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
                )
                if token_format is not None:
                    query = query.where(tokens.c.format == token_format)
                rows = [
                    r
                    for r in connection.execute(query.order_by(tokens.c.created_at))
                    if (as_utc(r.expires_at) or now + timedelta(days=1)) > now
                    and self._guessable_only_widely(r.format, len(pan))
                ]
                for row in rows:  # found by fingerprint: the database's word (session 37)
                    confirm_card(self, row, pan)
                self._audit.append_many(connection, self._lookup_entries(ctx, rows))
                return [self._record(r) for r in rows]

            try:
                return self._transaction(work)
            except OracleSuspected as refused:  # after its HMAC: costs its unit all the same
                self._charge_refused(ctx, rules, 1)
                self._suspect(ctx, guarded, refused)
                raise

    def _lookup_entries(self, ctx: CallContext, rows: Sequence[Row[Any]]) -> list[AuditEvent]:
        """A lookup's entries: one per token it answers, naming its id, as a batch writes
        one per item (session 40: a lookup's one entry named none, and a deleted token's
        row written back from a backup answered a lookup unseen by evidence check 6e);
        one naming none when it found none. Each says how many were found."""
        if not rows:
            return [self._audit_event(ctx, Action.LOOKUP, Outcome.SUCCESS, details={"found": 0})]
        return [
            self._audit_event(
                ctx,
                Action.LOOKUP,
                Outcome.SUCCESS,
                token_id=row.id,
                details={"found": len(rows), "found_index": index},
            )
            for index, row in enumerate(rows)
        ]

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
