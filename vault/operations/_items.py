"""One checked tokenize item (`_Item`) and what the oracle guard counts for it: the
pieces of `vault.operations.tokenize` that planning an item needs, kept apart so that
module stays readable in one sitting.

IN PCI SCOPE: an item holds the card.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from policies.formats import (
    MIN_CANDIDATES,
    FormatSpec,
    FormatType,
    hidden_candidates,
    may_converge,
)
from vault.card import CardBundle
from vault.errors import IntegrityError, TokenDeleted, TokenExpired
from vault.models import CallContext, TokenizeRequest, TokenRecord
from vault.operations._inputs import expiry
from vault.pan import Pan
from vault.storage.database import as_utc

if TYPE_CHECKING:
    from sqlalchemy import Row

    from audit.log import AuditEvent
    from policies.models import IdentityPolicy
    from vault._core import VaultCore
    from vault.operations.tokenize import TokenizeOperations


def _guard_kind(
    spec: FormatSpec, request: TokenizeRequest, *, converges: bool | None = None
) -> str | None:
    """What the oracle guard counts for this item: ``"card"`` (the card, when the answer
    depends on what the vault holds: convergence or an idempotency key), ``"token"``
    (each fresh token of a small random space, which it uses up), or None.
    `converges`: ``may_converge(spec, len(request.pan))`` when the caller has it."""
    length = len(request.pan)
    if converges is None:
        converges = may_converge(spec, length)
    if converges or request.idempotency_key is not None:
        return "card"
    if spec.type is FormatType.RANDOM and hidden_candidates(spec, length) < MIN_CANDIDATES:
        return "token"
    return None


def shoppers_bucket(bucket: bytes) -> bytes:
    """The oracle guard's bucket that counts hosted captures of the cards of `bucket`
    (`_Item.as_shoppers`): one of its own, beside the creator's calls' (review 29)."""
    return hashlib.sha256(b"cofre-oracle-shoppers\x00" + bucket).digest()[:16]


@dataclass(slots=True)
class _Item:
    """One checked tokenize item and what storing it needs (fingerprints: see _tokenize)."""

    request: TokenizeRequest
    spec: FormatSpec
    card: CardBundle  # what is sealed: the PAN and its details
    code_epoch: int | None  # the key epoch of its security code, if it brings one
    metadata: str
    convergent: bool  # this call may answer a stored token for the same PAN
    fingerprint: bytes
    fp_version: int
    known_fps: list[bytes]
    guard: tuple[bytes, bytes] | None  # (oracle bucket, item) when the guard counts it
    guards_card: bool  # the guard's item is the card's fingerprint
    # Drawn before the transaction (`_plan`), used if the item gets a new token: the
    # draws are random, so when they are made changes nothing, and on SQLite the writer
    # lock is then not held for them (issue 21). None: drawn in the transaction.
    candidate: str | None = None
    token_id: str | None = None
    # What a hit on a stored token may change on it: its life (`_outlive`) and its card
    # details. A capture (a shopper, not the shop's backend) changes neither (R28-3).
    extends: bool = True
    replaces_details: bool = True

    def as_shoppers(self) -> None:
        """Make this item a hosted capture's (a shopper's card, from a browser): a hit
        on a stored token changes neither its life nor its details (R28-3), and the
        oracle guard counts it in the captures' bucket (`shoppers_bucket`), not with
        the session creator's own calls. Counted together (until review 29), anyone
        who could load the shop's checkout 11 times filled the creator's bucket of a
        card's BIN and last four, and the shop's backend was refused every new card of
        it for a day or two; now shoppers can fill only the captures' count."""
        self.extends = self.replaces_details = False
        if self.guard is not None:
            self.guard = (shoppers_bucket(self.guard[0]), self.guard[1])


@dataclass(frozen=True, slots=True)
class _Call:
    """A single tokenize call's part in a merged commit group (`_run_merged`)."""

    ctx: CallContext
    rules: IdentityPolicy
    domain: str
    item: _Item

    @property
    def key(self) -> Hashable:
        """Calls that may run as one batch: one identity, domain and policy, and
        fingerprints under the same key versions (calls planned on either side of a
        fingerprint rotation's start would not find each other's card)."""
        versions = (self.item.fp_version, len(self.item.known_fps))
        return (self.ctx.identity, self.domain, id(self.rules), versions)


@dataclass(slots=True)
class _Answers:
    """What the items have been answered so far, and the audit entries to write, each
    with its item's index (the calls of a merged group each have their own)."""

    ctxs: Sequence[CallContext]  # each item's caller
    results: list[TokenRecord | None]
    events: list[tuple[int, AuditEvent]] = field(default_factory=list)
    same_as: dict[int, tuple[int, str]] = field(default_factory=dict)  # -> (earlier, result)
    # item -> its result if not a new row: a later item with its key is audited the same
    # (a key first answered by convergence is recorded, not held on the token's row).
    how: dict[int, str] = field(default_factory=dict)
    first_with_key: dict[str, int] = field(default_factory=dict)
    first_for: dict[tuple[str, bytes], int] = field(default_factory=dict)
    stored: dict[int, Row[Any]] = field(default_factory=dict)  # item -> row it answers
    entry: dict[int, int] = field(default_factory=dict)  # item -> its tokenize entry's place
    # item -> the life its ask gave the token it got (None: for good), for its entry.
    extended: dict[int, datetime | None] = field(default_factory=dict)

    def answer(
        self, service: TokenizeOperations, index: int, row: Row[Any], result: str, pan: Pan
    ) -> None:
        """Answer item `index` (the card `pan`) with the stored token `row`. Raises
        `IntegrityError` unless the row holds that very card (`confirm_card`)."""
        confirm_card(service, row, pan)
        self.results[index] = service._record(row, existing=True)
        self.stored[index], self.how[index] = row, result
        self.add(index, service._tokenize_event(self.ctxs[index], row.id, row.format, result))

    def add(self, index: int, event: AuditEvent) -> None:
        """Item `index`'s tokenize entry."""
        self.entry[index] = len(self.events)
        self.events.append((index, event))

    def root(self, index: int) -> int:
        """The item whose token item `index` was answered (itself unless `same`)."""
        while index in self.same_as:
            index = self.same_as[index][0]
        return index

    def note_extensions(self) -> None:
        """Write into each extending item's entry until when its ask made the token
        live (`details.expires_at`: an ISO time or ``never``)."""
        for index, until in self.extended.items():
            at = self.entry[index]
            event = self.events[at][1]
            shown = "never" if until is None else until.isoformat()
            self.events[at] = (
                index,
                replace(event, details={**event.details, "expires_at": shown}),
            )

    def same(self, index: int, earlier: int, result: str) -> None:
        """Item `index` gets what item `earlier` got; its audit result is `result`."""
        self.same_as[index] = (earlier, result)
        self.how[index] = result


def confirm_card(service: VaultCore, row: Row[Any], pan: Pan) -> None:
    """Raise `IntegrityError` unless the stored token `row`, found by its fingerprint or
    an idempotency key's record, opens (its AAD binds the row and its domain) to the card
    `pan`.

    Why (session 37): the fingerprint and the record are the database's word. A writer
    of the database gave customer B's token customer A's fingerprint (fingerprints are
    HMACs of the card alone, so any domain's row of A shows it), or pointed A's key at
    B's token: A's next tokenize, lookup or retry was answered B's token, and with card
    details B's row was sealed again with A's card, so B's next charge went to A."""
    if service._open_card(row).pan != pan:
        raise IntegrityError(
            "a stored token found by its fingerprint or idempotency key holds another "
            "card (its row was altered)",
            token_id=row.id,
        )


def longest(lives: Iterable[datetime | None]) -> datetime | None:
    """The longest of lives (None: for ever)."""
    ends = list(lives)
    return None if None in ends else max(end for end in ends if end is not None)


def longest_ask(
    items: Sequence[_Item], indices: Sequence[int], now: datetime
) -> tuple[int, datetime | None]:
    """The first of items `indices` that asks the longest life (its `ttl_seconds` from
    `now`; none: for ever), and that life (`TokenizeOperations._lives`)."""
    if len(indices) == 1:  # most tokens of a batch: ~1 us less per card (issue 21)
        return indices[0], expiry(now, items[indices[0]].request.ttl_seconds)
    wanted = {index: expiry(now, items[index].request.ttl_seconds) for index in indices}
    life = longest(wanted.values())
    return next(index for index in indices if wanted[index] == life), life


def gone(row: Any) -> TokenExpired | TokenDeleted:
    """Why a shredded token (`row`) is not answered to its idempotency key: the purge
    shreds it once expired, a delete at any time. Its fingerprint went with it, so the
    retry's card cannot be matched (it was answered 409 "another PAN", for good)."""
    ends, shredded = as_utc(row.expires_at), as_utc(row.deleted_at)
    if ends is not None and shredded is not None and ends <= shredded:
        return TokenExpired("this idempotency key's token has expired: use a new key")
    return TokenDeleted("this idempotency key's token was deleted: use a new key")
