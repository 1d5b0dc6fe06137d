"""Update: a token's metadata, life and card details (expiry, cardholder name), never
its card number nor a security code.

IN PCI SCOPE, holds card data. The card-on-file case: a card reissued under its number
with a new expiry (Visa Account Updater, Mastercard ABU) is told to the shop, whose
backend holds only the token; this is how it updates the stored expiry. The details are
sealed exactly as tokenize seals them (`VaultCore._reseal`: the PAN, expiry and name in
one AES-256-GCM payload bound to the row), and only in the caller's own domain: a token
of another domain, deleted, expired or never made is answered the same `TokenNotFound`.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection, Row, select, update

from audit.log import AuditEvent, DetailValue, Outcome
from policies.errors import PolicyDenied
from policies.models import Action, IdentityPolicy
from vault.card import CardBundle
from vault.errors import InvalidInput, TokenNotFound
from vault.models import CallContext, TokenRecord, TokenUpdate
from vault.operations._early import EarlyRate
from vault.operations._guesses import missed_tokens
from vault.operations._inputs import card_details, expiry, validate_metadata
from vault.storage.database import as_utc
from vault.storage.schema import tokens

# The audit entry of every update call: granted, denied, refused or failed.
AUDIT_ACTION: Final = "token.update"


@dataclasses.dataclass(frozen=True, slots=True)
class _Checked:
    """A `TokenUpdate` checked and normalised before its transaction."""

    metadata: str | None
    sets_ttl: bool
    ttl_seconds: int | None
    card_expiry: str | None
    cardholder_name: str | None

    @property
    def fields(self) -> list[str]:
        """The names of the parts this update changes, sorted (its audit entry's
        ``fields``: names only, never a value)."""
        named = {
            "cardholder_name": self.cardholder_name is not None,
            "expiry": self.card_expiry is not None,
            "metadata": self.metadata is not None,
            "ttl_seconds": self.sets_ttl,
        }
        return [name for name, changed in named.items() if changed]


class UpdateOperations(EarlyRate):
    """Token update of the vault."""

    def update(self, ctx: CallContext, token: str, change: TokenUpdate) -> TokenRecord:
        """Apply `change` to `token`, a live token of the caller's own domain, and return
        the token as `token_info` answers it (never the PAN). In one transaction: the
        charge, the row's change under a row lock (an update racing another update or a
        delete applies after it, and never to a shredded row) and one ``token.update``
        audit entry naming the changed parts, never their values.

        Raises `PolicyDenied` (audited), `InvalidInput` (nothing to change),
        `InvalidMetadata`, `SensitiveAuthenticationData`, `InvalidTTL`,
        `InvalidExpiry`, `CardExpired`, `InvalidCardholderName`, `TokenNotFound` (another
        domain's token, deleted, expired or never made: one answer), `RateLimited`,
        `StorageUnavailable`, `AuditWriteFailed`, `HSMUnavailable`, `IntegrityError`."""
        rules = self._authorize_update(ctx)
        domain = rules.domain_of(ctx.identity)
        with self._audited_refusal(ctx, AUDIT_ACTION):
            checked = self._check_update(change)
            # A sweep of a bucket's tokens through updates is the reads' sweep (atk49a):
            # a full bucket refuses its tokens here too, and a miss counts as a read's.
            self._refuse_guessed(ctx, rules, [token])
            self._refuse_spent(ctx, rules, 1)

            def work(connection: Connection) -> TokenRecord | TokenNotFound:
                self._charge(connection, ctx, rules)
                found = self._row_to_update(connection, token, domain)
                if found is None:
                    # Returned, not raised: the charge commits (a miss costs a unit).
                    return TokenNotFound("no such token")
                row, now = found
                return self._apply(connection, ctx, row, checked, now)

            answer = self._transaction(work)
            if isinstance(answer, TokenNotFound):
                self._count_missed(ctx, rules, missed_tokens(answer, [token]))
                raise answer
            return answer

    def _authorize_update(self, ctx: CallContext) -> IdentityPolicy:
        """`_authorize` for `Action.UPDATE`, its denial audited as ``token.update`` (the
        name every entry of this call carries). Raises `PolicyDenied`."""
        try:
            return self._authorize(ctx, Action.UPDATE, audited=False)
        except PolicyDenied as exc:
            self._write_audit(
                self._audit_event(ctx, AUDIT_ACTION, Outcome.DENIED, details={"reason": str(exc)})
            )
            raise

    def _check_update(self, change: TokenUpdate) -> _Checked:
        """`change` checked as tokenize checks the same inputs. Raises what `update`
        raises for its input."""
        now = self._clock()
        given = (
            change.metadata is not None
            or change.sets_ttl
            or change.expiry is not None
            or change.cardholder_name is not None
        )
        if not given:
            raise InvalidInput(
                "an update changes at least one of metadata, ttl_seconds, expiry, cardholder_name"
            )
        if change.sets_ttl:
            expiry(now, change.ttl_seconds)  # raises InvalidTTL
        metadata = None if change.metadata is None else validate_metadata(change.metadata)
        card_expiry, name = card_details(change.expiry, change.cardholder_name, now)
        checked = _Checked(
            metadata=metadata,
            sets_ttl=change.sets_ttl,
            ttl_seconds=change.ttl_seconds,
            card_expiry=card_expiry,
            cardholder_name=name,
        )
        if not checked.fields:
            # A blank name alone changes nothing (a stored name is not removed): refused
            # as an empty update is, not audited as an update done (review 29c).
            raise InvalidInput("this update changes nothing: a blank name removes no name")
        return checked

    def _row_to_update(
        self, connection: Connection, token: str, domain: str
    ) -> tuple[Row[Any], datetime] | None:
        """The live row of `token` in `domain`, locked until the commit (PostgreSQL's
        ``FOR UPDATE``; SQLite's transactions are serialised by ``BEGIN IMMEDIATE``), and
        the time it was judged live at, or None. Locked, a concurrent update or delete
        of the row waits for this commit, and this read waits for theirs and then sees
        the row as they left it: a shredded row is None here, never sealed again. The
        time is read once the lock is held: read before, a token whose life ended while
        this waited was judged live and given a new one (review 29c)."""
        if not 1 <= len(token) <= 64:
            return None
        # The domain in the statement, not only checked after it: a row the statement
        # does not select is never locked, so a stranger's guess of another domain's
        # token never waits on that domain's transactions (review 46: it waited for the
        # lock's bound and was answered 503 where a token never issued is 404 at once).
        row = connection.execute(
            select(tokens)
            .where(tokens.c.token == token, tokens.c.domain == domain)
            .with_for_update()
        ).first()
        now = self._clock()
        if (
            row is None
            or row.domain != domain  # the statement's own condition, checked once more
            or row.deleted_at is not None
            or row.ciphertext is None
        ):
            return None
        expires = as_utc(row.expires_at)
        if expires is not None and expires <= now:
            return None
        return row, now

    def _apply(
        self,
        connection: Connection,
        ctx: CallContext,
        row: Row[Any],
        checked: _Checked,
        now: datetime,
    ) -> TokenRecord:
        """Write `checked` to the locked `row` and its audit entry; return the token as
        it now stands."""
        record = self._record(row)
        values: dict[str, Any] = {}
        details: dict[str, DetailValue] = {"fields": ",".join(checked.fields)}
        if checked.metadata is not None:
            values["metadata"] = checked.metadata
            record = dataclasses.replace(record, metadata=json.loads(checked.metadata))
        if checked.sets_ttl:
            ends = expiry(now, checked.ttl_seconds)
            values["expires_at"] = ends
            record = dataclasses.replace(record, expires_at=ends)
            details["expires_at"] = "never" if ends is None else ends.isoformat()
        if values:
            connection.execute(update(tokens).where(tokens.c.id == row.id).values(**values))
        if checked.card_expiry is not None or checked.cardholder_name is not None:
            # Resealed as tokenize reseals a reissued card's details: the new ones over
            # the stored ones, the PAN as it was.
            pan = self._open_card(row).pan
            card = CardBundle(pan, checked.card_expiry, checked.cardholder_name)
            self._reseal(connection, row, card)
        self._audit.append(connection, self._update_event(ctx, row.id, details))
        return record

    def _update_event(
        self, ctx: CallContext, token_id: str, details: dict[str, DetailValue]
    ) -> AuditEvent:
        return self._audit_event(
            ctx, AUDIT_ACTION, Outcome.SUCCESS, token_id=token_id, details=details
        )
