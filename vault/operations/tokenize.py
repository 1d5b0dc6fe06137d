"""Tokenize: a PAN becomes a token in the caller's domain, stored and audited.

IN PCI SCOPE, holds card data. One path for one item and for many (a single call is a
batch of one). Stored PANs are AES-256-GCM ciphertexts; the AAD binds the token id, the
token, the key version and the token domain. Fingerprints are HMAC-SHA256 under the HSM's
fingerprint key, for convergent tokens and lookup; a token found by one is answered only
once it opens to the card sent (`_items.confirm_card`).
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, select

from audit.log import AuditEvent, Outcome
from policies.formats import (
    FormatType,
)
from policies.models import Action, IdentityPolicy
from vault.errors import (
    BatchItemInvalid,
    IdempotencyConflict,
    OracleSuspected,
    TokenDeleted,
    TokenExpired,
    VaultError,
)
from vault.keyring import KeyPurpose
from vault.models import MAX_BATCH, CallContext, Pending, TokenizeRequest, TokenRecord
from vault.operations._candidates import TokenCandidates
from vault.operations._idempotency import KeyedRows, keyed_rows, record_keys
from vault.operations._items import _Answers, _Call, _Item, gone, longest_ask
from vault.operations._statements import (
    _confirm_answers,
    _convergent_rows,
    _keys_used_elsewhere,
    _outlive,
)
from vault.storage.database import as_utc
from vault.storage.groupcommit import Merge
from vault.storage.rawsql import insert_many
from vault.storage.schema import tokens
from vault.tokens import RandomDraws, uuid4_strings


def _unless_refused(raw: list[TokenRecord] | VaultError) -> list[TokenRecord] | None:
    """A transaction's answer as is when it stored the tokens; None when it answers a
    refusal (an idempotency conflict: raised, and audited, by `finish`)."""
    return None if isinstance(raw, VaultError) else raw


class TokenizeOperations(TokenCandidates):
    """Tokenize operations of the vault."""

    def _plan(
        self, domain: str, requests: Sequence[TokenizeRequest], *, batch: bool
    ) -> list[_Item]:
        """Check every item, then compute what storing them needs (before the
        transaction): the cards' fingerprints, in HSM calls of many and only once every
        item is checked, so a refused call spends no HMAC. Every path that stores a
        token plans it here (the relay's answer too: an item stored without its
        fingerprint would never converge and would block the domain's convergent index).
        Raises the first invalid item's `VaultError` (`BatchItemInvalid` in a batch)."""
        items = []
        for index, request in enumerate(requests):
            try:
                items.append(self._check(domain, request))
            except VaultError as exc:
                raise self._item_error(exc, index, batch=batch) from None
        prints, fp_version, known = self._card_prints([i.request.pan.reveal() for i in items])
        # The call's random draws and ids from a few reads of the OS's generator, not
        # one or two per card (issue 21; the same distributions: `vault.tokens`).
        draws = RandomDraws(block=8 * len(items))
        ids = uuid4_strings(len(items))
        for item, fingerprint, fps, token_id in zip(items, prints, known, ids, strict=True):
            item.fingerprint, item.fp_version, item.known_fps = fingerprint, fp_version, fps
            if item.guard is not None and item.guards_card:
                item.guard = (item.guard[0], fingerprint)
            # FF1's draw is the card's own and costs: it stays for the cards that need
            # one (an FPE format may converge, answering a stored token instead).
            if item.spec.type is not FormatType.FPE:
                item.candidate = self._first_candidate(
                    item.spec, item.request.pan, domain, draws.randbelow
                )
            item.token_id = token_id
        return items

    def tokenize(self, ctx: CallContext, request: TokenizeRequest) -> TokenRecord:
        """Return the token for `request.pan` in `request.format`, stored and audited.

        Raises `PolicyDenied`, `RateLimited`, `OracleSuspected`, `InvalidPan`,
        `FormatNotApplicable`, `InvalidMetadata`, `InvalidTTL`, `IdempotencyConflict`,
        `TokenSpaceExhausted`, `StorageUnavailable`, `AuditWriteFailed`, `HSMUnavailable`.
        """
        return self._tokenize(ctx, [request], batch=False).finish()[0]

    def tokenize_batch(
        self, ctx: CallContext, requests: Sequence[TokenizeRequest]
    ) -> list[TokenRecord]:
        """Tokenize every request, all or nothing, results in order. A batch of N costs
        N against the rate limit.

        Raises `BatchItemInvalid` naming the first invalid item (nothing is written), or
        what `tokenize` raises for the batch as a whole.
        """
        if not 1 <= len(requests) <= MAX_BATCH:
            raise BatchItemInvalid(0, "invalid_request", f"a batch has 1 to {MAX_BATCH} items")
        return self._tokenize(ctx, requests, batch=True).finish()

    def tokenize_pending(self, ctx: CallContext, request: TokenizeRequest) -> Pending[TokenRecord]:
        """`tokenize`, handed to the group committer and not waited for (`Pending`);
        raises at once what `tokenize` raises before its transaction."""
        calls = self._tokenize(ctx, [request], batch=False)
        return Pending(
            calls.committed,
            lambda raw: None if (records := calls.quick(raw)) is None else records[0],
            lambda: calls.finish()[0],
        )

    def _tokenize(
        self,
        ctx: CallContext,
        requests: Sequence[TokenizeRequest],
        *,
        batch: bool,
        action: Action = Action.TOKENIZE,
        within: Callable[[Connection, list[TokenRecord]], None] | None = None,
        shopper: bool = False,
    ) -> Pending[list[TokenRecord]]:
        """The one tokenize path, up to its transaction's submission (`Pending`; its
        `finish()` is the synchronous call): a single call is a batch of one. `action` is
        what the caller's policy must allow (a hosted capture tokenizes under
        ``capture``); `within` runs in the same transaction after the tokens are stored
        (a capture spends its session there: if it raises, nothing is stored). With
        `shopper` (a capture: a card from a browser, no certificate) a hit on a stored
        token changes neither its life nor the details it holds, but fills in missing
        ones (R28-3): the shop's backend decides those, not whoever holds the card."""
        with self._audited_refusal(ctx, action):
            rules = self._authorize(ctx, action, token_format=requests[0].format)
            domain = rules.domain_of(ctx.identity)
            for other in {r.format for r in requests[1:]} - {requests[0].format}:
                self._authorize(ctx, action, token_format=other)
            self._refuse_early(ctx, rules, requests)
            items = self._plan(domain, requests, batch=batch)
            if shopper:
                for item in items:
                    item.as_shoppers()  # R28-3; its own oracle count (review 29)
            guarded = [item.guard for item in items if item.guard is not None]
            self._refuse_suspected(ctx, rules, guarded, len(items))  # before the group (fin37)

            def work(connection: Connection) -> list[TokenRecord] | VaultError:
                now = self._clock()
                keyed = self._charged(connection, ctx, rules, domain, items, now, batch=batch)
                if isinstance(keyed, VaultError):
                    return keyed
                stored = self._store_tokens(
                    connection, ctx, domain, items, now, batch=batch, keyed=keyed
                )
                if within is not None:
                    within(connection, stored)
                return stored

            # Alone: a call with a security code or card details (a later call's replace
            # an earlier one's, which a batch of the two does not do) or an idempotency
            # key (a conflict, answered 409, would make its whole group run again).
            merge, first = None, requests[0]
            plain = first.security_code is None and first.idempotency_key is None
            if not batch and within is None and plain and not items[0].card.has_details:
                call = _Call(ctx, rules, domain, items[0])
                merge = Merge((action, call.key), self._run_merged, call)
            submitted = self._submit(work, merge)

        def finish() -> list[TokenRecord]:
            with self._audited_refusal(ctx, action):
                try:
                    answer = self._settle(submitted, work, merge)
                except OracleSuspected as refused:  # after its HMACs: costs its units all the same
                    self._charge_refused(ctx, rules, len(items))
                    self._suspect(ctx, guarded, refused)
                    raise
                if isinstance(answer, VaultError):
                    raise answer
                return answer

        return Pending(submitted, _unless_refused, finish)

    def _run_merged(
        self, connection: Connection, parts: Sequence[tuple[contextvars.Context, _Call]]
    ) -> list[list[TokenRecord]]:
        """Single calls of one identity in one commit group as one batch: one guard read,
        probe, check and insert for all (issue 21), answered as calls one after another.
        Raises on anything that would refuse or fail one: each then runs alone."""
        calls = [call for _, call in parts]
        ctx, rules, domain = calls[0].ctx, calls[0].rules, calls[0].domain
        items = [call.item for call in calls]
        now = self._clock()
        keyed = self._charged(connection, ctx, rules, domain, items, now, batch=True)
        if isinstance(keyed, VaultError):
            raise keyed  # answered alone: a conflict commits its charge
        ctxs = [call.ctx for call in calls]
        results, events = self._answer_items(
            connection, ctxs, domain, items, now, batch=True, keyed=keyed
        )
        for index, (context, _) in enumerate(parts):  # in its context: its own trail
            own = [event for item, event in events if item == index]
            context.run(self._audit.append_many, connection, own)
        return [[record] for record in results]

    def _charged(  # noqa: PLR0917 - the call's parts, in the order `_tokenize` has them
        self,
        connection: Connection,
        ctx: CallContext,
        rules: IdentityPolicy,
        domain: str,
        items: Sequence[_Item],
        now: datetime,
        *,
        batch: bool,
    ) -> KeyedRows | VaultError:
        """Charge the call's items to its rate limit and oracle guard; the idempotency
        conflict it would be answered (`_key_conflict`), or what its keys answer."""
        # Charged with the rest of its commit group just before the commit (the bucket's
        # row locked for the commit only, issue 21); what follows is all undone if that
        # charge is refused, and the early check already refused a spent bucket before
        # any HSM call.
        self._charge(connection, ctx, rules, cost=len(items))
        guarded = [item.guard for item in items if item.guard is not None]
        if guarded:
            self._limits.watch(connection, ctx.identity, rules.oracle_guard, guarded, now)
        # A wrong guess sent with a known idempotency key is answered 409: that answer
        # must cost its charge and its guard count like a right one, so the conflict
        # commits them (and nothing else) instead of rolling back.
        keyed = keyed_rows(connection, ctx.identity, domain, items, now - self._key_window)
        return self._key_conflict(connection, ctx, domain, items, keyed, batch=batch) or keyed

    def _key_conflict(
        self,
        connection: Connection,
        ctx: CallContext,
        domain: str,
        items: Sequence[_Item],
        keyed: KeyedRows,
        *,
        batch: bool,
    ) -> VaultError | None:
        """The `IdempotencyConflict` (or its batch item error) the call would raise, or
        None; writes nothing."""
        by_key = keyed.by_key
        new_keys = [
            key
            for item in items
            if (key := item.request.idempotency_key) is not None and key not in by_key
        ]
        recorded_elsewhere = keyed.elsewhere.intersection(new_keys)
        elsewhere = recorded_elsewhere | _keys_used_elsewhere(
            connection, ctx.identity, domain, sorted(set(new_keys) - recorded_elsewhere)
        )
        scratch = _Answers([ctx] * len(items), [None] * len(items))
        try:
            for index, item in enumerate(items):
                if item.request.idempotency_key in elsewhere:
                    raise self._item_error(
                        IdempotencyConflict(
                            "this idempotency key was used by this identity in another token domain"
                        ),
                        index,
                        batch=batch,
                    )
                self._answer_by_key(scratch, index, items, by_key, batch=batch)
        except (IdempotencyConflict, TokenExpired, TokenDeleted, BatchItemInvalid) as exc:
            return exc
        return None

    def _store_tokens(
        self,
        connection: Connection,
        ctx: CallContext,
        domain: str,
        items: Sequence[_Item],
        now: datetime,
        *,
        batch: bool,
        keyed: KeyedRows | None = None,
    ) -> list[TokenRecord]:
        """Answer every item inside one transaction and audit it: an idempotent retry or
        a convergent hit answers the stored token; everything else gets a new one. A
        handful of statements for the whole call, not a few per item. `keyed`: what the
        items' keys answer, when the call read it already (`_charged`)."""
        if keyed is None:
            keyed = keyed_rows(connection, ctx.identity, domain, items, now - self._key_window)
        results, events = self._answer_items(
            connection, [ctx] * len(items), domain, items, now, batch=batch, keyed=keyed
        )
        codes = [(i.request.security_code, i.code_epoch, i.replaces_details) for i in items]
        audited = [event for _, event in events]
        audited += self._hold_codes(connection, ctx, codes, results, now)
        self._audit.append_many(connection, audited)
        return results

    def _answer_items(
        self,
        connection: Connection,
        ctxs: Sequence[CallContext],
        domain: str,
        items: Sequence[_Item],
        now: datetime,
        *,
        batch: bool,
        keyed: KeyedRows,
    ) -> tuple[list[TokenRecord], list[tuple[int, AuditEvent]]]:
        """`_store_tokens` but the audit: every item's record, and the entries to write,
        each with its item's index. Records each key used first here with its answer."""
        answers = _Answers(ctxs, [None] * len(items))
        by_key = keyed.by_key
        held = _convergent_rows(connection, domain, items)
        fresh: dict[int, str] = {}  # item index -> candidate token
        for index, item in enumerate(items):
            if self._answer_by_key(answers, index, items, by_key, batch=batch):
                continue
            if item.convergent and self._answer_convergent(
                connection, answers, index, item, held=held, now=now
            ):
                continue
            fresh[index] = item.candidate or self._first_candidate(
                item.spec, item.request.pan, domain
            )
        resealed: set[str] = set()
        for index, item in enumerate(items):  # a keyed retry is a replay (sessions 30, 30c)
            if answers.how.get(index) == "idempotent":  # (its item is never merged: plain)
                item.code_epoch = None  # no code held (`_hold_codes`), no details resealed
            elif (stored := answers.stored.get(index)) is not None and item.card.has_details:
                if stored.id in resealed:  # a batch's card again: over its earlier reseal
                    again = select(tokens).where(tokens.c.id == stored.id)
                    stored = connection.execute(again).one()
                self._reseal(connection, stored, item.card, replace=item.replaces_details)
                resealed.add(stored.id)
        lives = self._lives(connection, answers, items, fresh, now)
        _confirm_answers(connection, answers)  # as they stand at the commit (session 31)
        if fresh:
            self._settle_candidates(connection, fresh, items, domain)
        indexed_rows = self._new_rows(connection, ctxs[0], domain, items, fresh, now, lives)
        if indexed_rows:
            insert_many(connection, tokens, [row for _, row in indexed_rows])
        for index, row in indexed_rows:
            answers.results[index] = TokenRecord(
                token=row["token"],
                token_id=row["id"],
                format=row["format"],
                created_at=now,
                expires_at=row["expires_at"],
                # Most calls carry none: no parse for them (issue 21, per card of a batch).
                metadata={} if row["metadata"] == "{}" else json.loads(row["metadata"]),
                existing=False,
            )
            answers.add(index, self._tokenize_event(ctxs[index], row["id"], row["format"], "new"))
        for index, (source, result) in answers.same_as.items():  # the same PAN or key
            first = answers.results[source]
            assert first is not None  # noqa: S101 - every source was answered above
            answers.results[index] = dataclasses.replace(first, existing=True)
            event = self._tokenize_event(ctxs[index], first.token_id, first.format, result)
            answers.add(index, event)
        answers.note_extensions()
        since = now - self._key_window
        record_keys(
            connection, domain, ctxs, answers.results, answers.first_with_key, keyed, now, since
        )
        return [r for r in answers.results if r is not None], answers.events

    def _answer_by_key(
        self,
        answers: _Answers,
        index: int,
        items: Sequence[_Item],
        by_key: Mapping[str, Row[Any]],
        *,
        batch: bool,
    ) -> bool:
        """Answer item `index` from its idempotency key if the key was used before (in
        the store or earlier in this call); raise `IdempotencyConflict` if it was used
        for another card or format, `TokenExpired` if its token has expired. Returns
        whether the item is answered."""
        item = items[index]
        key = item.request.idempotency_key
        if key is None:
            return False
        previous = by_key.get(key)
        if previous is not None and previous.deleted_at is not None:  # no card left to match
            raise self._item_error(gone(previous), index, batch=batch)
        if previous is not None and _expired(previous, self._clock()):
            # Gone for every reveal: never handed out (or resealed) as a live token; and
            # whatever card the retry sends, as once the purge shredded it: a 409 for
            # another card here answered whether it was the token's (session 49).
            error = TokenExpired("this idempotency key's token has expired: use a new key")
            raise self._item_error(error, index, batch=batch)
        earlier = answers.first_with_key.setdefault(key, index)
        if previous is not None:
            same = previous.fingerprint in item.known_fps and previous.format == item.request.format
        elif earlier != index:
            first = items[earlier]
            same = (first.fingerprint, first.request.format) == (
                item.fingerprint,
                item.request.format,
            )
        else:
            return False
        if not same:
            raise self._item_error(
                IdempotencyConflict("this idempotency key was used for another PAN or format"),
                index,
                batch=batch,
            )
        if previous is not None:
            answers.answer(self, index, previous, "idempotent", item.card.pan)
        else:
            answers.same(index, earlier, answers.how.get(earlier, "idempotent"))
        return True

    def _answer_convergent(
        self,
        connection: Connection,
        answers: _Answers,
        index: int,
        item: _Item,
        *,
        held: dict[tuple[str, bytes], Row[Any]],
        now: datetime,
    ) -> bool:
        """Answer a convergent item from the token its card already has in the domain
        (or from the same card earlier in this call). An expired token is shredded and
        the item gets a new one (`_replace_expired`). Returns whether the item is
        answered."""
        token_format = item.request.format
        found = next(
            (held[(token_format, fp)] for fp in item.known_fps if (token_format, fp) in held),
            None,
        )
        if found is not None:
            expires = as_utc(found.expires_at)
            if expires is not None and expires <= now:
                found = self._replace_expired(connection, answers, index, found, now)
                for fp in item.known_fps:  # a later item of the card: as this one
                    if found is None:
                        held.pop((token_format, fp), None)
                    elif (token_format, fp) in held:
                        held[(token_format, fp)] = found
            if found is not None:
                answers.answer(self, index, found, "convergent", item.card.pan)  # life: `_lives`
                return True
        earlier = answers.first_for.setdefault((token_format, item.fingerprint), index)
        if earlier != index:
            answers.same(index, earlier, "convergent")
            return True
        return False

    def _replace_expired(
        self, connection: Connection, answers: _Answers, index: int, row: Row[Any], now: datetime
    ) -> Row[Any] | None:
        """Shred `row`, the card's token read expired without a lock, audited in item
        `index`'s entries; None: the item gets a new token. Made live since on another
        node (an update, an `_outlive`: review 29c's race, for the purge), the row is
        returned as it now stands for the item to answer: the card's one convergent
        token in the domain, its holder told it lives (nor could a new one be stored
        beside it). Shredded since (a purge, a delete): a new token, and no entry."""
        if not self._shred(connection, row.id, now, expired=True):
            # Locked (PostgreSQL): as it stays until the commit.
            row = connection.execute(
                select(tokens).where(tokens.c.id == row.id).with_for_update()
            ).one()
            if row.deleted_at is not None:
                return None
            if (ends := as_utc(row.expires_at)) is None or ends > now:
                return row
            self._shred(connection, row.id, now)  # a shorter life, ended too
        purge = self._audit_event(
            answers.ctxs[index],
            "purge",
            Outcome.SUCCESS,
            token_id=row.id,
            details={"reason": "expired, replaced by a new token"},
        )
        answers.events.append((index, purge))
        return None

    def _lives(
        self,
        connection: Connection,
        answers: _Answers,
        items: Sequence[_Item],
        fresh: Mapping[int, str],
        now: datetime,
    ) -> dict[int, datetime | None]:
        """Make every token this call's items converge on live as long as the longest
        life any of them asks (`ttl_seconds`, none: for ever), never shorter: a caller
        asking for a token for good was handed one about to expire, and lost the card at
        the purge (6e891dd for a stored token; R28-2 for one an earlier item of the same
        call makes: a batch, or single calls merged in one commit group). Extends stored
        tokens (`_outlive`) and returns the life of each new token, by its item. An
        idempotent answer asks nothing (a retry alone changes no life), nor does an item
        that may not extend (a capture, R28-3). The item whose ask set the life has it
        in its entry (`details.expires_at`)."""
        askers: dict[int, list[int]] = {}  # the item a token is made or found for -> askers
        for index, item in enumerate(items):
            root = answers.root(index)
            if index != root:
                asks = answers.same_as[index][1] == "convergent" and item.extends
            else:
                asks = index in fresh or (answers.how.get(index) == "convergent" and item.extends)
            if asks:
                askers.setdefault(root, []).append(index)
        lives: dict[int, datetime | None] = {}
        for root, indices in askers.items():
            asker, life = longest_ask(items, indices, now)
            if root in fresh:
                lives[root] = life
                if asker != root:
                    answers.extended[asker] = life
            else:
                _outlive(connection, answers, root, life, asker)
        return lives

    def _new_rows(  # noqa: PLR0917 - the call's parts, in the order _store_tokens has them
        self,
        connection: Connection,
        ctx: CallContext,
        domain: str,
        items: Sequence[_Item],
        fresh: Mapping[int, str],
        now: datetime,
        lives: Mapping[int, datetime | None],
    ) -> list[tuple[int, dict[str, Any]]]:
        if not fresh:  # every card answered by a stored token: no key needed
            return []
        # In this transaction, not from the keyring's cache: see `sealing_version`.
        version = self._keyring.sealing_version(connection, KeyPurpose.PAN_GCM)
        cipher = self._keyring.gcm(version)
        rows = []
        # Every run of the transaction draws its own: a rerun may seal under another
        # token (AAD), and a nonce must never seal twice under one key. One draw for
        # all of them (a getrandom call per card was ~5% of a batch's commit, issue 21).
        nonces = secrets.token_bytes(12 * len(fresh))
        for position, (index, token) in enumerate(fresh.items()):
            item = items[index]
            token_id = item.token_id or str(uuid.uuid4())
            nonce = nonces[12 * position : 12 * position + 12]
            rows.append(
                (
                    index,
                    {
                        "id": token_id,
                        "token": token,
                        "format": item.request.format,
                        "convergent": item.convergent,
                        "fingerprint": item.fingerprint,
                        "fp_version": item.fp_version,
                        "key_version": version,
                        "nonce": nonce,
                        "ciphertext": cipher.encrypt(
                            nonce,
                            item.card.seal(),
                            self._keyring.sealing_aad(token_id, token, version, domain),
                        ),
                        "metadata": item.metadata,
                        "owner": ctx.identity,
                        "domain": domain,
                        "idempotency_key": item.request.idempotency_key,
                        "created_at": now,
                        "expires_at": lives[index],
                    },
                )
            )
        return rows

    def _tokenize_event(
        self, ctx: CallContext, token_id: str, token_format: str, result: str
    ) -> AuditEvent:
        return self._audit_event(
            ctx,
            Action.TOKENIZE,
            Outcome.SUCCESS,
            token_id=token_id,
            details={"format": token_format, "result": result},
        )


def _expired(row: Row[Any], now: datetime) -> bool:
    """Whether the token `row` has a life and it has ended at `now`."""
    expires = as_utc(row.expires_at)
    return expires is not None and expires <= now
