"""Audit entries and their writer: one canonical-JSON row per event, in the caller's
transaction.

IN PCI SCOPE. `AuditLog.append` takes the SQLAlchemy connection of the transaction that
performs the operation, so the operation and its record commit together or not at all.
If the insert fails, `AuditWriteFailed` is raised and the caller's transaction must roll
back (fail closed): no operation without its record.

An entry holds time, actor identity, action, outcome, request id, token id or key id and
small details. It never holds a PAN: every string is passed through
`cofre.redaction.mask_pan_like`, and every integer of a card's length written masked,
before it is written, as a last line of defence behind the callers, who never pass one.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final, cast

from sqlalchemy import Connection, insert
from sqlalchemy.exc import SQLAlchemyError

from audit._rows import insert_queued_entries
from audit.errors import AuditWriteFailed
from audit.schema import audit_entries, audit_queue
from cofre.dberrors import db_error_name
from cofre.redaction import MIN_DIGITS, mask_pan_like, mask_pan_values

ENTRY_FORMAT_VERSION: Final = 1
_MAX_DETAIL_ITEMS: Final = 32
_MAX_STRING: Final = 512
_MIN_CARD_INT: Final = 10 ** (MIN_DIGITS - 1)  # the smallest integer with a card's digits
# A document an entry records whole (the policy text of a load or reload, whose hash is
# in the entry too; the officer's signed request of a key ceremony's proposal or
# approval, which the evidence verifier checks again): bounded, and refused rather than
# cut, since a cut one would no longer verify.
MAX_DOCUMENT: Final = 64 * 1024
# Built once: every operation appends, and building a statement per call costs more
# Python time than running it.
_INSERT_ENTRY: Final = insert(audit_entries).returning(audit_entries.c.id)
_INSERT_QUEUED: Final = insert(audit_queue)

_HEX_DIGEST: Final = re.compile(r"^[0-9a-f]{1,128}$")


class HexDigest(str):
    """A lowercase hex string Cofre computed itself (a certificate's SHA-256, its
    serial), written to the entry as it is. Ordinary strings are masked, and a run of
    twelve decimal digits turns up in about one SHA-256 in five: masking would break
    the link from the entry to the certificate. Never wrap input in it."""

    __slots__ = ()

    def __new__(cls, value: str) -> HexDigest:
        if not _HEX_DIGEST.match(value):
            raise TypeError("a HexDigest is 1 to 128 lowercase hex characters")
        return super().__new__(cls, value)


DetailValue = str | int | bool | None
_MAX_ADDRESS: Final = 64  # an IPv6 address with a zone is under 64 characters


@dataclass(frozen=True, slots=True)
class Source:
    """Where an API request came from (PCI DSS 10.2.2, "origination"): the TCP peer's
    address and the SHA-256 fingerprint of the client certificate it presented. Built
    once per connection (`api.tls`) and the same object passed to every entry of it: a
    batch's 1,000 entries share one. The address is the immediate peer (a load
    balancer's, behind one); no forwarded header is believed. The fingerprint is a
    `HexDigest` (computed by Cofre, written exactly: the entry of a refused
    certificate names its ``cert_sha256`` the same way, so the two can be matched)."""

    address: str | None = None
    certificate: HexDigest | None = None

    def payload(self) -> dict[str, str]:
        body: dict[str, str] = {}
        if self.address is not None:
            body["address"] = _masked(self.address[:_MAX_ADDRESS])
        if self.certificate is not None:
            if not isinstance(self.certificate, HexDigest):
                raise TypeError("a source's certificate is a HexDigest")
            body["certificate"] = str(self.certificate)
        return body


# The entry ids written on behalf of the request being served, when the API opened a
# trail for it (`request_trail`): the API writes one entry itself for a request that
# ended without any (a rejection before any operation ran).
_TRAIL: ContextVar[list[int] | None] = ContextVar("cofre_audit_trail", default=None)
# The origination of the request being served, for the entries made in its context
# that were not handed one (`AuditEvent.source`).
_SOURCE: ContextVar[Source | None] = ContextVar("cofre_audit_source", default=None)


def request_source() -> Source | None:
    """The origination of the request being served (`request_trail`), None outside one:
    what a count of its refusals written later, off the request, names (session 42)."""
    return _SOURCE.get()


@contextmanager
def request_trail(source: Source | None = None) -> Iterator[list[int]]:
    """Collect, for the duration of the block, the ids of the entries appended in this
    context (and in contexts copied from it: worker threads, the group committer).
    On a connection inside `notes_on_commit` (the group committer's) an id is recorded
    only once its transaction committed; elsewhere one may be recorded for a transaction
    that later rolls back. Entries made in this context without a `source` of their
    own get `source` (the request's origination, PCI DSS 10.2.2)."""
    trail: list[int] = []
    token = _TRAIL.set(trail)
    source_token = _SOURCE.set(source)
    try:
        yield trail
    finally:
        _SOURCE.reset(source_token)
        _TRAIL.reset(token)


# The sieve of the request being served for the refusal entries written in its
# context (`refusal_sieve`): None writes every entry.
_SIEVE: ContextVar[Callable[[AuditEvent], bool] | None] = ContextVar(
    "cofre_audit_refusal_sieve", default=None
)


@contextmanager
def refusal_sieve(sieve: Callable[[AuditEvent], bool] | None) -> Iterator[None]:
    """While the block runs, a refusal entry made in this context (and in contexts
    copied from it) by a writer that asks `sieved` is written only when `sieve(event)`
    says so (None: always); otherwise `sieve` counted it, to be written in a count
    (session 39: the API's sieve for a service without a rate limit,
    `api._refusal_sieve`)."""
    token = _SIEVE.set(sieve)
    try:
        yield
    finally:
        _SIEVE.reset(token)


def sieved(event: AuditEvent) -> bool:
    """Whether `event`'s own entry is to be written: always, unless the request being
    served has a `refusal_sieve` that counted it instead (a success is never counted)."""
    sieve = _SIEVE.get()
    return sieve is None or event.outcome is Outcome.SUCCESS or sieve(event)


# Entry ids held back from their trails until the transaction commits: (trail, ids).
HeldNotes = list[tuple[list[int], list[int]]]
_HELD: Final = "cofre_audit_held_notes"


@contextmanager
def notes_on_commit(connection: Connection, held: HeldNotes) -> Iterator[HeldNotes]:
    """While the block runs, the ids of the entries appended on `connection` go into
    `held`, not yet into their trails; `release_notes(held)` puts them there once the
    transaction committed. A request whose entry rolled back (a failed commit, a
    rolled-back savepoint: drop what it added to `held`) then has no id in its trail,
    so the API still writes the request's own entry: a failure is never left without
    an audit trace because an entry that never became durable was counted."""
    connection.info[_HELD] = held
    try:
        yield held
    finally:
        connection.info.pop(_HELD, None)  # the DBAPI connection goes back to the pool


def release_notes(held: HeldNotes) -> None:
    """Note the held ids in their trails (call only after the commit succeeded)."""
    for trail, entry_ids in held:
        trail.extend(entry_ids)
    held.clear()


def _note(connection: Connection, entry_ids: Sequence[int], trail: list[int] | None) -> None:
    if trail is None:
        return
    held: HeldNotes | None = connection.info.get(_HELD)
    if held is not None:
        held.append((trail, list(entry_ids)))
    else:
        trail.extend(entry_ids)


class Outcome(StrEnum):
    SUCCESS = "success"
    DENIED = "denied"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened. `details` values are str, int, bool or None (no floats: canonical
    JSON must have one spelling per value)."""

    action: str
    outcome: Outcome
    actor: str
    request_id: str | None = None
    token_id: str | None = None
    key_id: str | None = None
    details: Mapping[str, DetailValue] = field(default_factory=dict)
    # Written only when set, so entries without one keep their exact bytes: a policy
    # text, or a ceremony action's signed request (`vault.approval_proof`).
    document: str | None = None
    # Written only when set, like `document`: the origination of an API request. CLI
    # actions, the sequencer and the vault's own jobs have none. Unless given, the
    # request's being served (`request_trail`): an officer's ceremony step or custody
    # acknowledgement is made without a `CallContext`, and is an API request's too.
    source: Source | None = field(default_factory=request_source)


# Short strings `mask_pan_like` left as they were. An operation's entries repeat the
# same actor, request id, action and detail values (a batch of 1,000 writes 1,000
# entries that differ only in their token id), and the masking regexes were most of
# the cost of an entry (issue 21). Only strings with nothing to mask are kept, so no
# card number is ever held here; emptied when full.
_UNMASKED: Final[dict[str, None]] = {}
_UNMASKED_MAX: Final = 4096
_UNMASKED_LEN: Final = 128


def _encodable(text: str) -> str:
    """`text` as UTF-8 can carry it: a lone surrogate (a file name's undecodable byte
    as Python hands it over, e.g. `cofre audit export --out`) spelt as its escape. The
    entry's bytes are its Merkle leaf: a string UTF-8 cannot encode left the CLI with
    a traceback instead of its entry (review of session 32). Such a text is masked as
    it came before it is escaped (the caller masks the escaped text again): an escape's
    last hex digits glue to the digits after it (``\\ud800NNNN NNNNNN NNNNN``), the
    card's first group is then no longer the card's, and it went in clear (review of
    session 33)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return mask_pan_like(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _masked(text: str) -> str:
    if text in _UNMASKED:
        return text
    text = _encodable(text)
    masked = mask_pan_like(text)
    if masked == text and len(text) <= _UNMASKED_LEN:
        if len(_UNMASKED) >= _UNMASKED_MAX:
            _UNMASKED.clear()
        _UNMASKED[text] = None
    return masked


def _clean(value: DetailValue) -> DetailValue:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        # An integer long enough to be a card is written masked, as a string, as
        # `mask_pan_values` writes JSON numbers (review 15: one went out in clear).
        return value if -_MIN_CARD_INT < value < _MIN_CARD_INT else mask_pan_values(value)
    if isinstance(value, HexDigest):
        return str(value)
    if isinstance(value, str):
        return _masked(value[:_MAX_STRING])
    raise TypeError(f"audit detail values must be str, int, bool or None, not {type(value)}")


# The last entry time written and its text: a call's entries share one time.
_last_time: tuple[datetime, str] | None = None


def _entry_time(at: datetime) -> str:
    global _last_time  # noqa: PLW0603 - a one-entry cache; a tuple swap is atomic
    last = _last_time
    if last is not None and last[0] == at:  # the same instant: the same UTC text
        return last[1]
    text = at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    _last_time = (at, text)
    return text


def _identifier(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) > 128:
        raise TypeError("audit identifiers are strings of at most 128 characters")
    return value


def canonical_payload(event: AuditEvent, at: datetime) -> str:
    """Return the entry's canonical JSON: sorted keys, no whitespace, no floats, UTF-8.

    These exact bytes are the Merkle leaf data; `cofre audit verify` rehashes them.
    """
    if len(event.details) > _MAX_DETAIL_ITEMS:
        raise TypeError("too many audit details")
    body: dict[str, object] = {
        "v": ENTRY_FORMAT_VERSION,
        "time": _entry_time(at),
        "action": _clean(event.action),
        "outcome": event.outcome.value,
        "actor": _clean(event.actor),
        "request_id": _clean(event.request_id),
        # Ids Cofre generates itself (UUIDs, key labels) are kept as they are: a UUID's
        # last group is twelve hex digits, sometimes all decimal, and masking it would
        # break the link from the entry to its token.
        "token_id": _identifier(event.token_id),
        "key_id": _identifier(event.key_id),
        "details": {str(_clean(k)): _clean(v) for k, v in event.details.items()},
    }
    if event.document is not None:
        if len(event.document) > MAX_DOCUMENT:
            raise TypeError(f"audit documents are at most {MAX_DOCUMENT} characters")
        body["document"] = mask_pan_like(_encodable(event.document))
    if event.source is not None and (source := event.source.payload()):
        body["source"] = source
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


# `canonical_payloads`: calls with at least this many entries render the entries that
# differ only in their token id once; the token id stands in for this while rendering.
_TEMPLATE_MIN: Final = 8
_SENTINEL: Final = "\x00cofre:token-id\x00"
_SENTINEL_FIELD: Final = '"token_id":' + json.dumps(_SENTINEL, ensure_ascii=False)


def canonical_payloads(events: Sequence[AuditEvent], at: datetime) -> list[str]:
    """`canonical_payload` of each of `events`, byte for byte. A batch's entries differ
    only in their token id: those are rendered once, with a stand-in for the id, and
    each entry's own id is spelt into it (issue 21: rendering and masking every entry
    whole was ~15% of a batch's commit, under SQLite's writer lock). The top-level
    ``"token_id":`` sorts after every field that could hold the stand-in too (details,
    document): a rest that holds it anywhere else is rendered whole, every time."""
    if len(events) < _TEMPLATE_MIN:
        return [canonical_payload(event, at) for event in events]
    templates: dict[tuple[object, ...], tuple[str, str] | None] = {}
    payloads = []
    for event in events:
        # The types too: True == 1, and a HexDigest equals the plain string, which is
        # masked where the digest is not (as a value or as a key: review 14).
        fields = (event.action, event.actor, event.request_id, event.key_id, event.document)
        key = (
            *((type(value), value) for value in fields),
            event.source,  # frozen, compared by value: one object for a whole batch
            (type(event.outcome), event.outcome),
            tuple((type(k), k, type(v), v) for k, v in event.details.items()),
        )
        if key not in templates:
            whole = canonical_payload(dataclasses.replace(event, token_id=_SENTINEL), at)
            # The top-level key sorts after every field that could hold the stand-in
            # (details, document); a second occurrence means a value holds it: no
            # template for that rest.
            head, found, tail = whole.rpartition(_SENTINEL_FIELD)
            templates[key] = (
                (head + '"token_id":', tail)
                if found and whole.count(_SENTINEL_FIELD) == 1
                else None
            )
        template = templates[key]
        if template is None:
            payloads.append(canonical_payload(event, at))
            continue
        token_id = json.dumps(_identifier(event.token_id), ensure_ascii=False)
        payloads.append(template[0] + token_id + template[1])
    return payloads


class AuditLog:
    """Writes entries; the sequencer (`audit.sequencer`) later gives them leaf indices."""

    def __init__(self, clock: type[datetime] = datetime) -> None:
        self._clock = clock

    def _now(self, connection: Connection, *, hold: bool = False) -> datetime:
        """The time of an entry written now on `connection`: the time `hold` kept for
        its transaction, if any; else the clock's, kept for it when `hold`."""
        transaction = connection.get_transaction()
        held = connection.info.get(_HELD_TIME)
        if held is not None and transaction is not None and held[0] is transaction:
            return cast("datetime", held[1])
        now = self._clock.now(UTC)
        if hold and transaction is not None:
            connection.info[_HELD_TIME] = (transaction, now)
        return now

    def append(self, connection: Connection, event: AuditEvent, *, hold: bool = False) -> int:
        """Insert `event` in `connection`'s transaction and queue it for sequencing.

        With `hold`, every later entry of the same transaction takes this one's time:
        a period is chosen by time, and a key registration and the start of the
        ceremony that made it must fall in one period (check 6d ties them; review 36b:
        a period that ended between the two FAILED a genuine rotation's bundle).
        Returns the entry id. Raises `AuditWriteFailed` when the database refuses; the
        caller must then roll back its transaction.
        """
        now = self._now(connection, hold=hold)
        payload = canonical_payload(event, now)
        try:
            entry_id = connection.execute(
                _INSERT_ENTRY, {"payload": payload, "created_at": now}
            ).scalar_one()
            # The entry's own time, so that the sequencer reads it from its partition.
            connection.execute(_INSERT_QUEUED, {"entry_id": entry_id, "created_at": now})
        except SQLAlchemyError as exc:
            raise AuditWriteFailed(
                f"the audit entry could not be written ({db_error_name(exc)}); "
                "the operation is refused"
            ) from None
        _note(connection, [int(entry_id)], _TRAIL.get())
        return int(entry_id)

    def append_many(self, connection: Connection, events: Sequence[AuditEvent]) -> None:
        """Insert `events` in `connection`'s transaction, in one round trip for the entries
        and the queue on PostgreSQL, one each on SQLite (batches). Raises
        `AuditWriteFailed` like `append`.

        Inside `deferred_appends` on `connection`, the rows are only queued (their
        payloads made now) and written by its flush, with every other operation's of the
        same transaction."""
        if not events:
            return
        now = self._now(connection)
        rows = [(payload, now) for payload in canonical_payloads(events, now)]
        pending: _Pending | None = connection.info.get(_DEFERRED)
        if pending is not None:
            trail = _TRAIL.get()
            pending.extend((row, trail) for row in rows)
            return
        _note(connection, _insert_rows(connection, rows), _TRAIL.get())


# A list of (row, trail) that `AuditLog.append_many` queues on a connection while
# `deferred_appends` runs on it, kept in the connection's `info` (the DBAPI
# connection's, so `deferred_appends` always removes it before the connection returns
# to the pool).
_Pending = list[tuple[tuple[str, datetime], list[int] | None]]
_DEFERRED: Final = "cofre_audit_deferred_rows"
# The (transaction, time) an entry written with `hold` kept for its transaction's later
# entries, in the connection's `info`; another transaction is another object.
_HELD_TIME: Final = "cofre_audit_held_time"


def _insert_rows(connection: Connection, rows: Sequence[tuple[str, datetime]]) -> list[int]:
    """Write `rows` (payload, time), each queued with its time (`insert_queued_entries`:
    multi-row inserts on the transaction's cursor), and return their ids, in order."""
    try:
        # With no order asked of RETURNING: SQLite promises none (asking SQLAlchemy for
        # one made it insert a batch row by row there, issue 21), so the ids are
        # matched to the rows by payload below.
        written = insert_queued_entries(connection, rows)
    except SQLAlchemyError as exc:
        raise AuditWriteFailed(
            f"the audit entry could not be written ({db_error_name(exc)}); the operation is refused"
        ) from None
    # Rows with the same payload are the same entry, byte for byte: which of them gets
    # which id is indifferent.
    ids: dict[str, list[int]] = {}
    for entry_id, payload in reversed(written):
        ids.setdefault(payload, []).append(int(entry_id))
    return [ids[payload].pop() for payload, _ in rows]


@contextmanager
def deferred_appends(connection: Connection) -> Iterator[Callable[[], None]]:
    """While the block runs, `AuditLog.append_many` on `connection` queues its rows;
    the function it yields writes them all in one multi-row insert (entries and queue
    together on PostgreSQL, one each on SQLite), and must be called before the
    transaction commits. The group committer runs the operations of a group this way:
    one insert for the group, not one per operation (issue 21). Rows not flushed when
    the block ends are dropped, so a block that ends without its flush must roll back;
    a failed flush raises `AuditWriteFailed` and so must roll back too (fail closed:
    the operations of the transaction do not happen). Each entry id is noted in the
    trail of the context that appended it (held until the commit inside
    `notes_on_commit`)."""
    pending: _Pending = []
    connection.info[_DEFERRED] = pending

    def flush() -> None:
        del connection.info[_DEFERRED]  # from now on, appends write at once
        if not pending:
            return
        ids = _insert_rows(connection, [row for row, _ in pending])
        for (_, trail), entry_id in zip(pending, ids, strict=True):
            _note(connection, [entry_id], trail)

    try:
        yield flush
    finally:
        connection.info.pop(_DEFERRED, None)
