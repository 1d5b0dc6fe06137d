"""The vault service: tokenize, detokenize, lookup, metadata, delete, batches, purge.

IN PCI SCOPE, holds card data. The only code that turns a `Pan` into stored ciphertext
and back. Every public method:

1. authorises the caller against the policy (raises `PolicyDenied`, which is audited);
2. does its work and writes its audit entry **in one database transaction**, so nothing
   is returned that is not durably stored and audited (fail closed: if the entry cannot
   be written, the transaction rolls back and the caller gets `AuditWriteFailed`);
3. translates database failures into `StorageUnavailable`; HSM failures arrive as
   `hsm.errors.HSMUnavailable`.

Stored PANs are AES-256-GCM ciphertexts; the AAD binds the token id, the token and the
key version, so a ciphertext moved to another row fails authentication instead of
decrypting to the wrong PAN. Fingerprints are HMAC-SHA256 under the HSM's fingerprint
key, for convergent tokens and lookup.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

from cryptography.exceptions import InvalidTag
from sqlalchemy import Connection, Engine, Row, and_, bindparam, insert, select, text, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import IntegrityError as SQLIntegrityError

from audit.log import AuditEvent, AuditLog, DetailValue, Outcome
from cofre.dberrors import db_error_name
from cofre.errors import CofreError
from cofre.redaction import mask_pan_like
from hsm.keys import KeyHierarchy, KeyKind, key_label
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.errors import PolicyDenied, RateLimited
from policies.formats import (
    MIN_CANDIDATES,
    FormatSpec,
    FormatType,
    LuhnMode,
    SmallSpace,
    hidden_candidates,
    may_converge,
)
from policies.models import Action, IdentityPolicy, RateLimit, RelayRoute, Reveal
from vault.errors import (
    BatchItemInvalid,
    FormatNotApplicable,
    IdempotencyConflict,
    IntegrityError,
    InvalidMetadata,
    InvalidPan,
    InvalidTTL,
    RelayBodyInvalid,
    StorageUnavailable,
    Throttled,
    TokenExpired,
    TokenNotFound,
    TokenSpaceExhausted,
    VaultError,
)
from vault.keyring import DataKeyring, KeyPurpose, pan_aad
from vault.limits import MAX_WINDOW_SECONDS, Limits, oracle_bucket
from vault.pan import Pan
from vault.policy_record import policy_event
from vault.relay import (
    RelayClient,
    RelayResult,
    get_pointer,
    mask_strings,
    set_pointer,
)
from vault.sad import refuse_sensitive_authentication_data
from vault.storage.database import as_utc
from vault.storage.groupcommit import GroupCommitter
from vault.storage.schema import tokens
from vault.tokens import (
    FpeTokenizer,
    check_applicable,
    random_token_candidates,
    uuid_token,
)

T = TypeVar("T")

MAX_METADATA_ITEMS: Final = 16
MAX_METADATA_KEY: Final = 64
MAX_METADATA_VALUE: Final = 256
MAX_TTL_SECONDS: Final = 10 * 366 * 24 * 3600
MAX_BATCH: Final = 1000
_TRANSACTION_ATTEMPTS: Final = 5
_RETRYABLE_SQLSTATES: Final = frozenset({"40P01", "40001"})  # deadlock, serialization
_CANDIDATE_CHUNK: Final = 64
# The advisory lock key that elects the purging node ("CofrP"); the sequencer's differs.
_PURGE_LOCK_KEY: Final = 0x436F667250
# The hot path's statements, built once: building and cache-keying a statement per call
# cost more Python time than running it.
_INSERT_TOKEN: Final = insert(tokens)
_TAKEN: Final = select(tokens.c.token).where(tokens.c.token.in_(bindparam("chunk", expanding=True)))
_HELD: Final = (
    select(tokens.c.id).where(tokens.c.fingerprint.in_(bindparam("fps", expanding=True))).limit(1)
)
_CONVERGENT: Final = select(tokens).where(
    tokens.c.domain == bindparam("domain"),
    tokens.c.fingerprint.in_(bindparam("fps", expanding=True)),
    tokens.c.convergent,
)
_BY_IDEMPOTENCY: Final = select(tokens).where(
    tokens.c.domain == bindparam("domain"),
    tokens.c.idempotency_key.in_(bindparam("keys", expanding=True)),
)
_BY_TOKEN: Final = select(tokens).where(tokens.c.token == bindparam("token"))
_METADATA_KEY_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-."
)


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who is calling (the SAN URI of the verified client certificate) and the request."""

    identity: str
    request_id: str


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token and what may be said about it; never the PAN."""

    token: str
    token_id: str
    format: str
    created_at: datetime
    expires_at: datetime | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    existing: bool = False


@dataclass(frozen=True, slots=True)
class Revealed:
    """A detokenize answer: the PAN when the caller's policy reveals it in full, else
    only the masked form."""

    token: str
    masked: str
    pan: Pan | None


@dataclass(frozen=True, slots=True)
class TokenizeRequest:
    pan: Pan
    format: str
    metadata: Mapping[str, str] | None = None
    ttl_seconds: int | None = None
    idempotency_key: str | None = None


@dataclass(slots=True)
class _Answers:
    """What one tokenize call has answered so far, and the audit entries to write."""

    ctx: CallContext
    results: list[TokenRecord | None]
    events: list[AuditEvent] = field(default_factory=list)
    same_as: dict[int, int] = field(default_factory=dict)  # item -> earlier item
    first_with_key: dict[str, int] = field(default_factory=dict)
    first_for: dict[tuple[str, bytes], int] = field(default_factory=dict)

    def answer(self, service: VaultService, index: int, row: Row[Any], result: str) -> None:
        self.results[index] = service._record(row, existing=True)
        self.events.append(service._tokenize_event(self.ctx, row.id, row.format, result))


@dataclass(frozen=True, slots=True)
class _Item:
    """One checked tokenize item and what storing it needs."""

    request: TokenizeRequest
    spec: FormatSpec
    metadata: str
    convergent: bool  # this call may answer a stored token for the same PAN
    fingerprint: bytes
    fp_version: int
    known_fps: list[bytes]
    guard: tuple[bytes, bytes] | None  # (oracle bucket, item) when the guard counts it


def validate_metadata(metadata: object) -> str:
    """Return `metadata` as canonical JSON. Raises `InvalidMetadata` for too many or too
    long items, non-string values, or a key or value that looks like a card number
    (metadata is stored in clear, so a PAN in it would be a leak)."""
    if not metadata:
        return "{}"
    if not isinstance(metadata, Mapping):
        raise InvalidMetadata("metadata must be an object of string keys and values")
    if len(metadata) > MAX_METADATA_ITEMS:
        raise InvalidMetadata(f"metadata may have at most {MAX_METADATA_ITEMS} items")
    for key, value in metadata.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_METADATA_KEY:
            raise InvalidMetadata(f"metadata keys must be 1 to {MAX_METADATA_KEY} characters")
        if not set(key) <= _METADATA_KEY_CHARS:
            raise InvalidMetadata("metadata keys may use only letters, digits, '_', '-', '.'")
        if mask_pan_like(key) != key:
            raise InvalidMetadata(
                "a metadata key looks like a card number; metadata is not encrypted"
            )
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
            raise InvalidMetadata(
                f"metadata values must be strings of at most {MAX_METADATA_VALUE} characters"
            )
        refuse_sensitive_authentication_data(key, value)
        if mask_pan_like(value) != value:
            raise InvalidMetadata(
                f"metadata value {key!r} looks like a card number; metadata is not encrypted"
            )
    return json.dumps(dict(metadata), sort_keys=True, separators=(",", ":"))


def _expiry(now: datetime, ttl_seconds: int | None) -> datetime | None:
    if ttl_seconds is None:
        return None
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        raise InvalidTTL("ttl must be a whole number of seconds")
    if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise InvalidTTL(f"ttl must be between 1 and {MAX_TTL_SECONDS} seconds")
    return now + timedelta(seconds=ttl_seconds)


class VaultService:
    """The vault's operations for one database, HSM and policy."""

    def __init__(
        self,
        engine: Engine,
        provider: HSMProvider,
        policy: PolicyEngine,
        *,
        audit: AuditLog | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        group_commit: bool = True,
    ) -> None:
        self._engine = engine
        self._committer = GroupCommitter(engine) if group_commit else None
        self._relay_client = RelayClient()
        self._provider = provider
        self._policy = policy
        self._audit = audit or AuditLog()
        self._clock = clock
        self._keyring = DataKeyring(engine, provider)
        self._hierarchy = KeyHierarchy(provider)
        self._limits = Limits()
        self._fp_versions: list[int] | None = None
        self._fp_read = 0.0
        self._initialized = False
        self._init_lock = threading.Lock()

    @property
    def keyring(self) -> DataKeyring:
        return self._keyring

    @property
    def policy(self) -> PolicyEngine:
        return self._policy

    def replace_policy(
        self, policy: PolicyEngine, *, actor: str, source: str, text: str | None = None
    ) -> None:
        """Swap in a new policy, after recording it (`policy_event`): an evidence bundle
        shows the policy in force from the log, not from a file that may have changed."""
        self._write_audit(policy_event("policy.reload", actor=actor, source=source, text=text))
        self._policy = policy

    def record_policy_load(self, *, actor: str, source: str, text: str) -> None:
        """Record the policy this process starts with. Raises `AuditWriteFailed`."""
        self._write_audit(policy_event("policy.load", actor=actor, source=source, text=text))

    # ------------------------------------------------------------------ set-up
    def _ensure_initialized(self) -> None:
        # The vault may start while the HSM is down; the first call after it comes back
        # creates what is missing.
        if not self._initialized:
            with self._init_lock:
                if not self._initialized:
                    self.initialize()

    def initialize(self, *, actor: str = "cofre") -> list[str]:
        """Create the data keys if missing (audited); return what was created."""

        def work(connection: Connection) -> list[str]:
            created = self._keyring.ensure_active(connection)
            for purpose, version in created:
                self._audit.append(
                    connection,
                    AuditEvent(
                        action="key.create",
                        outcome=Outcome.SUCCESS,
                        actor=actor,
                        key_id=f"{purpose.value}-v{version}",
                    ),
                )
            return [f"{purpose.value}-v{version}" for purpose, version in created]

        # Before the transaction: adopting writes in a transaction of its own.
        self._keyring.registry.adopt_if_empty(actor=actor)
        created = self._transaction(work)
        self._initialized = True
        return created

    def close(self) -> None:
        self._relay_client.close()
        if self._committer is not None:
            self._committer.close()
        self._keyring.wipe_all()

    def check_ready(self) -> dict[str, str]:
        """Return {"hsm": "ok", "database": "ok"} or raise `HSMUnavailable` /
        `StorageUnavailable` for the first that fails."""
        self._provider.health_check()
        with self._storage(), self._engine.connect() as connection:
            connection.execute(select(1))
        self._ensure_initialized()
        self._keyring.registry.check()  # raises KeyNotRegistered
        return {"hsm": "ok", "database": "ok", "key_registry": "ok"}

    # ------------------------------------------------------------------ helpers
    @contextmanager
    def _storage(self, *, retryable: bool = False) -> Iterator[None]:
        try:
            yield
        except CofreError:
            raise
        except SQLIntegrityError:
            if retryable:
                raise  # a unique-key race that `_transaction` retries
            raise StorageUnavailable("the token store refused the write") from None
        except DBAPIError as exc:
            if retryable and getattr(exc.orig, "sqlstate", None) in _RETRYABLE_SQLSTATES:
                raise  # `_transaction` retries it
            raise StorageUnavailable(
                f"the token store is unavailable ({db_error_name(exc)})"
            ) from None
        except SQLAlchemyError as exc:
            raise StorageUnavailable(
                f"the token store is unavailable ({db_error_name(exc)})"
            ) from None

    def _transaction(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one transaction; retry on a unique-key race (another node took
        the same token or converged first)."""
        for attempt in range(_TRANSACTION_ATTEMPTS):
            try:
                with self._storage(retryable=True):
                    if self._committer is not None:
                        return self._committer.run(work)
                    with self._engine.begin() as connection:
                        return work(connection)
            except SQLIntegrityError:
                if attempt == _TRANSACTION_ATTEMPTS - 1:
                    raise StorageUnavailable(
                        "the token store kept refusing the write (unique conflicts)"
                    ) from None
            except DBAPIError as exc:
                # Two nodes' group commits can deadlock on each other's rows; PostgreSQL
                # aborts one of them. Nothing of it was written: run it again.
                if getattr(exc.orig, "sqlstate", None) not in _RETRYABLE_SQLSTATES or (
                    attempt == _TRANSACTION_ATTEMPTS - 1
                ):
                    raise StorageUnavailable(
                        f"the token store is unavailable ({db_error_name(exc)})"
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _write_audit(self, event: AuditEvent) -> None:
        with self._storage(), self._engine.begin() as connection:
            self._audit.append(connection, event)

    def _authorize(
        self,
        ctx: CallContext,
        action: Action,
        *,
        token_format: str | None = None,
        audited: bool = True,
    ) -> IdentityPolicy:
        """Authorise the call; audit (unless the caller audits) and re-raise a denial.
        Rate limits are charged inside each operation's transaction."""
        self._ensure_initialized()
        try:
            rules = self._policy.authorize(ctx.identity, action, token_format=token_format)
        except PolicyDenied as exc:
            if not audited:
                raise
            details: dict[str, DetailValue] = {"reason": str(exc)}
            if token_format is not None:
                details["format"] = token_format
            self._write_audit(
                AuditEvent(
                    action=action.value,
                    outcome=Outcome.DENIED,
                    actor=ctx.identity,
                    request_id=ctx.request_id,
                    details=details,
                )
            )
            raise
        return rules

    @contextmanager
    def _audited_refusal(self, ctx: CallContext, action: Action) -> Iterator[None]:
        """Audit any refusal or failure raised inside (a policy denial is audited where
        it is raised), then let it through. If even that entry cannot be written the
        original error stands: the operation did not happen either way."""
        try:
            yield
        except PolicyDenied:
            raise
        except CofreError as exc:
            throttled = isinstance(exc, Throttled | RateLimited)
            details: dict[str, DetailValue] = {"error": exc.code}
            if isinstance(exc, BatchItemInvalid):
                details["item"] = exc.index
                details["item_error"] = exc.item_code
            with contextlib.suppress(CofreError):
                self._write_audit(
                    self._audit_event(
                        ctx,
                        action,
                        Outcome.DENIED if throttled else Outcome.FAILED,
                        details=details,
                    )
                )
            raise

    def _charge(
        self,
        connection: Connection,
        ctx: CallContext,
        rules: IdentityPolicy,
        *,
        cost: int = 1,
        reveals: int = 0,
    ) -> None:
        """Charge `cost` to the caller's rate limit and `reveals` to its daily
        detokenize quota, inside the operation's transaction (a refusal rolls back)."""
        now = self._clock()
        if rules.rate_limit is not None:
            self._limits.charge_rate(
                connection, ctx.identity, rules.rate_limit, cost, now.timestamp()
            )
        if reveals and rules.quota is not None:
            self._limits.charge_quota(connection, ctx.identity, rules.quota, reveals, now)

    def charge_rate(self, key: str, limit: RateLimit, cost: int = 1) -> None:
        """Charge `cost` to the rate limit named `key` (an identity, or an identity and
        a purpose such as evidence exports), in the database shared by every node.
        Raises `RateLimited` (nothing charged), `StorageUnavailable`."""

        def work(connection: Connection) -> None:
            self._limits.charge_rate(connection, key, limit, cost, self._clock().timestamp())

        self._transaction(work)

    def _fingerprint_versions(self) -> list[int]:
        """The fingerprint key versions on the token, newest last (two while a
        fingerprint rotation migrates). Cached for a second."""
        now = time.monotonic()
        if self._fp_versions is None or now - self._fp_read > 1.0:
            versions = self._keyring.registry.versions(KeyKind.FINGERPRINT)
            if not versions:
                self._keyring.registry.current_label(KeyKind.FINGERPRINT)  # HSMKeyNotFound
            self._fp_versions, self._fp_read = versions, now
        return self._fp_versions

    def _fingerprint(self, digits: str) -> tuple[bytes, int]:
        """The fingerprint to store: under the newest fingerprint key."""
        version = self._fingerprint_versions()[-1]
        label = key_label(KeyKind.FINGERPRINT, version)
        return self._provider.hmac_sha256(label, digits.encode("ascii")), version

    def _fingerprints(self, digits: str) -> list[bytes]:
        """Every fingerprint a stored row of this PAN may carry (one per key version)."""
        return [
            self._provider.hmac_sha256(key_label(KeyKind.FINGERPRINT, v), digits.encode("ascii"))
            for v in self._fingerprint_versions()
        ]

    def _audit_event(
        self,
        ctx: CallContext,
        action: Action | str,
        outcome: Outcome,
        *,
        token_id: str | None = None,
        details: Mapping[str, DetailValue] | None = None,
    ) -> AuditEvent:
        name = action.value if isinstance(action, Action) else action
        return AuditEvent(
            action=name,
            outcome=outcome,
            actor=ctx.identity,
            request_id=ctx.request_id,
            token_id=token_id,
            details=dict(details or {}),
        )

    # ------------------------------------------------------------------ tokenize
    def _plan(self, domain: str, request: TokenizeRequest) -> _Item:
        """Check one item and compute what storing it needs (before the transaction:
        the HSM calls happen here). Raises the item's `VaultError`."""
        spec = self._policy.token_format(request.format)
        check_applicable(spec, request.pan)
        self._check_luhn(request.pan)
        metadata = validate_metadata(request.metadata)
        _expiry(self._clock(), request.ttl_seconds)
        key = request.idempotency_key
        if key is not None and not 1 <= len(key) <= 128:
            raise InvalidMetadata("idempotency keys must be 1 to 128 characters")
        if key is not None and mask_pan_like(key) != key:
            # It is stored in clear beside the token, like metadata.
            raise InvalidMetadata("an idempotency key must not look like a card number")
        length = len(request.pan)
        convergent = may_converge(spec, length)
        small = hidden_candidates(spec, length) < MIN_CANDIDATES
        if spec.deterministic and not convergent and spec.small_space is SmallSpace.REFUSE:
            raise FormatNotApplicable(
                f"format {request.format!r} converges (the same card gives the same token) "
                f"and {length}-digit cards leave fewer than {MIN_CANDIDATES:,} possible card "
                "numbers behind a token, so a caller could confirm a guess: refused by the "
                "rule on_small_space = 'refuse' (use a longer card or another format)"
            )
        digits = request.pan.reveal()
        fingerprint, fp_version = self._fingerprint(digits)
        # While a fingerprint rotation migrates, a stored row may carry either key's HMAC.
        known = (
            [fingerprint] if len(self._fingerprint_versions()) == 1 else self._fingerprints(digits)
        )
        guard: bytes | None = None
        if convergent or key is not None:
            guard = fingerprint  # the answer depends on what the vault holds
        elif small and spec.type is FormatType.RANDOM:
            guard = secrets.token_bytes(32)  # each fresh token uses up a small space
        return _Item(
            request=request,
            spec=spec,
            metadata=metadata,
            convergent=convergent,
            fingerprint=fingerprint,
            fp_version=fp_version,
            known_fps=known,
            guard=None if guard is None else (oracle_bucket(request.pan), guard),
        )

    def _check_luhn(self, pan: Pan) -> None:
        """Raise `InvalidPan` for a card number that fails the Luhn check, unless the
        policy exempts its range by name."""
        if pan.luhn_valid():
            return
        if self._policy.policy.luhn_exempt_prefix(pan.reveal()) is None:
            raise InvalidPan(
                "the card number fails its Luhn check digit (ISO/IEC 7812-1); a policy "
                "may exempt a named range of private-label cards (luhn_exempt)"
            )

    def tokenize(self, ctx: CallContext, request: TokenizeRequest) -> TokenRecord:
        """Return the token for `request.pan` in `request.format`, stored and audited.

        Raises `PolicyDenied`, `RateLimited`, `OracleSuspected`, `InvalidPan`,
        `FormatNotApplicable`, `InvalidMetadata`, `InvalidTTL`, `IdempotencyConflict`,
        `TokenSpaceExhausted`, `StorageUnavailable`, `AuditWriteFailed`, `HSMUnavailable`.
        """
        return self._tokenize(ctx, [request], batch=False)[0]

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
        return self._tokenize(ctx, requests, batch=True)

    def _tokenize(
        self, ctx: CallContext, requests: Sequence[TokenizeRequest], *, batch: bool
    ) -> list[TokenRecord]:
        """The one tokenize path: a single call is a batch of one."""
        with self._audited_refusal(ctx, Action.TOKENIZE):
            rules = self._authorize(ctx, Action.TOKENIZE, token_format=requests[0].format)
            domain = rules.domain_of(ctx.identity)
            for other in {r.format for r in requests[1:]} - {requests[0].format}:
                self._authorize(ctx, Action.TOKENIZE, token_format=other)
            items = []
            for index, request in enumerate(requests):
                try:
                    items.append(self._plan(domain, request))
                except VaultError as exc:
                    raise self._item_error(exc, index, batch=batch) from None

            def work(connection: Connection) -> list[TokenRecord]:
                now = self._clock()
                self._charge(connection, ctx, rules, cost=len(items))
                guarded = [item.guard for item in items if item.guard is not None]
                if guarded:
                    self._limits.watch(connection, ctx.identity, rules.oracle_guard, guarded, now)
                return self._store_tokens(connection, ctx, domain, items, now, batch=batch)

            return self._transaction(work)

    @staticmethod
    def _item_error(exc: VaultError, index: int, *, batch: bool) -> VaultError:
        return BatchItemInvalid(index, exc.code, str(exc)) if batch else exc

    def _store_tokens(
        self,
        connection: Connection,
        ctx: CallContext,
        domain: str,
        items: Sequence[_Item],
        now: datetime,
        *,
        batch: bool,
    ) -> list[TokenRecord]:
        """Answer every item inside one transaction: an idempotent retry or a convergent
        hit answers the stored token; everything else gets a new one. A handful of
        statements for the whole call, not a few per item."""
        answers = _Answers(ctx, [None] * len(items))
        by_key = self._rows_by_idempotency_key(connection, domain, items)
        held = self._convergent_rows(connection, domain, items)
        fresh: dict[int, str] = {}  # item index -> candidate token
        for index, item in enumerate(items):
            if self._answer_by_key(answers, index, items, by_key, batch=batch):
                continue
            if item.convergent and self._answer_convergent(
                connection, answers, index, item, held=held, now=now
            ):
                continue
            fresh[index] = self._first_candidate(item.spec, item.request.pan, domain)
        if fresh:
            self._settle_candidates(connection, fresh, items, domain)
        indexed_rows = self._new_rows(ctx, domain, items, fresh, now)
        if indexed_rows:
            connection.execute(_INSERT_TOKEN, [row for _, row in indexed_rows])
        for index, row in indexed_rows:
            answers.results[index] = TokenRecord(
                token=row["token"],
                token_id=row["id"],
                format=row["format"],
                created_at=now,
                expires_at=row["expires_at"],
                metadata=json.loads(row["metadata"]),
                existing=False,
            )
            answers.events.append(self._tokenize_event(ctx, row["id"], row["format"], "new"))
        for index, source in answers.same_as.items():  # the same PAN or key earlier
            first = answers.results[source]
            assert first is not None  # noqa: S101 - every source was answered above
            answers.results[index] = dataclasses.replace(first, existing=True)
            answers.events.append(
                self._tokenize_event(ctx, first.token_id, first.format, "convergent")
            )
        self._audit.append_many(connection, answers.events)
        return [r for r in answers.results if r is not None]

    @staticmethod
    def _rows_by_idempotency_key(
        connection: Connection, domain: str, items: Sequence[_Item]
    ) -> dict[str, Row[Any]]:
        # The key is the domain's, whoever in the domain sent it.
        keys = [i.request.idempotency_key for i in items if i.request.idempotency_key]
        if not keys:
            return {}
        return {
            row.idempotency_key: row
            for row in connection.execute(_BY_IDEMPOTENCY, {"domain": domain, "keys": keys})
        }

    @staticmethod
    def _convergent_rows(
        connection: Connection, domain: str, items: Sequence[_Item]
    ) -> dict[tuple[str, bytes], Row[Any]]:
        # Under any fingerprint key version a row may carry (two while one migrates).
        wanted = sorted({fp for item in items if item.convergent for fp in item.known_fps})
        held: dict[tuple[str, bytes], Row[Any]] = {}
        for start in range(0, len(wanted), 500):
            for row in connection.execute(
                _CONVERGENT, {"domain": domain, "fps": wanted[start : start + 500]}
            ):
                held[(row.format, bytes(row.fingerprint))] = row
        return held

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
        for another card or format. Returns whether the item is answered."""
        item = items[index]
        key = item.request.idempotency_key
        if key is None:
            return False
        previous = by_key.get(key)
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
            answers.answer(self, index, previous, "idempotent")
        else:
            answers.same_as[index] = earlier
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
        the item gets a new one. Returns whether the item is answered."""
        token_format = item.request.format
        found = next(
            (held[(token_format, fp)] for fp in item.known_fps if (token_format, fp) in held),
            None,
        )
        if found is not None:
            expires = as_utc(found.expires_at)
            if expires is None or expires > now:
                answers.answer(self, index, found, "convergent")
                return True
            self._shred(connection, found.id, now)
            answers.events.append(
                self._audit_event(
                    answers.ctx,
                    "purge",
                    Outcome.SUCCESS,
                    token_id=found.id,
                    details={"reason": "expired, replaced by a new token"},
                )
            )
            for fp in item.known_fps:
                held.pop((token_format, fp), None)
        earlier = answers.first_for.setdefault((token_format, item.fingerprint), index)
        if earlier != index:
            answers.same_as[index] = earlier
            return True
        return False

    def _new_rows(
        self,
        ctx: CallContext,
        domain: str,
        items: Sequence[_Item],
        fresh: Mapping[int, str],
        now: datetime,
    ) -> list[tuple[int, dict[str, Any]]]:
        version = self._keyring.active_version(KeyPurpose.PAN_GCM)
        cipher = self._keyring.gcm(version)
        rows = []
        for index, token in fresh.items():
            item = items[index]
            token_id = str(uuid.uuid4())
            nonce = secrets.token_bytes(12)
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
                            item.request.pan.reveal().encode("ascii"),
                            pan_aad(token_id, token, version),
                        ),
                        "metadata": item.metadata,
                        "owner": ctx.identity,
                        "domain": domain,
                        "idempotency_key": item.request.idempotency_key,
                        "created_at": now,
                        "expires_at": _expiry(now, item.request.ttl_seconds),
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

    def _first_candidate(self, spec: FormatSpec, pan: Pan, domain: str) -> str:
        if spec.type is FormatType.UUID:
            return uuid_token()
        if spec.type is FormatType.FPE:
            version = self._keyring.active_version(KeyPurpose.FF1)
            return FpeTokenizer(self._keyring.ff1(version)).encrypt(spec, pan, domain=domain)
        return next(random_token_candidates(spec, pan))

    def _settle_candidates(
        self, connection: Connection, fresh: dict[int, str], items: Sequence[_Item], domain: str
    ) -> None:
        """Replace every candidate that is taken (in the store or earlier in the call)
        or that equals a held PAN, one by one; the rest were checked in one query."""
        values = list(fresh.values())
        taken: set[str] = set()
        for start in range(0, len(values), 500):
            taken.update(
                connection.execute(_TAKEN, {"chunk": values[start : start + 500]}).scalars()
            )
        used: set[str] = set()
        for index, candidate in list(fresh.items()):
            spec = items[index].spec
            check_pans = spec.type is not FormatType.UUID and spec.luhn is not LuhnMode.FAIL
            token = candidate
            if (
                candidate in taken
                or candidate in used
                or (check_pans and self._is_held_pan(connection, candidate))
            ):
                token = self._new_token(
                    connection, spec, items[index].request.pan, domain, avoid=used
                )
            fresh[index] = token
            used.add(token)

    @staticmethod
    def _record(row: Row[Any], *, existing: bool = False) -> TokenRecord:
        return TokenRecord(
            token=row.token,
            token_id=row.id,
            format=row.format,
            created_at=as_utc(row.created_at) or row.created_at,
            expires_at=as_utc(row.expires_at),
            metadata=json.loads(row.metadata or "{}"),
            existing=existing,
        )

    def _new_token(
        self,
        connection: Connection,
        spec: FormatSpec,
        pan: Pan,
        domain: str,
        avoid: set[str] | None = None,
    ) -> str:
        if spec.type is FormatType.UUID:
            candidates: Iterator[str] = iter([uuid_token(), uuid_token(), uuid_token()])
        elif spec.type is FormatType.FPE:
            version = self._keyring.active_version(KeyPurpose.FF1)
            candidates = iter(
                [FpeTokenizer(self._keyring.ff1(version)).encrypt(spec, pan, domain=domain)]
            )
        else:
            candidates = random_token_candidates(spec, pan)
        # A token that passes Luhn (or may) must never equal a PAN the vault holds.
        check_pans = spec.type is not FormatType.UUID and spec.luhn is not LuhnMode.FAIL
        size = 1  # the first candidate is almost always free: try it alone
        while True:
            chunk = [c for _, c in zip(range(size), candidates, strict=False)]
            size = _CANDIDATE_CHUNK
            if not chunk:
                raise TokenSpaceExhausted(
                    "every token of this format for this BIN and last four is taken"
                )
            taken = set(connection.execute(_TAKEN, {"chunk": chunk}).scalars())
            for candidate in chunk:
                if candidate in taken or (avoid is not None and candidate in avoid):
                    continue
                if check_pans and self._is_held_pan(connection, candidate):
                    continue
                return candidate

    def _is_held_pan(self, connection: Connection, candidate: str) -> bool:
        fps = self._fingerprints(candidate)
        return connection.execute(_HELD, {"fps": fps}).first() is not None

    # ------------------------------------------------------------------ detokenize
    def _live_row(self, connection: Connection, token: str, domains: frozenset[str]) -> Row[Any]:
        """The live row of `token` in one of `domains`. A token of another domain is
        answered exactly as a token that does not exist: no answer tells a caller what
        another domain holds."""
        if not 1 <= len(token) <= 64:
            raise TokenNotFound("no such token")
        row = connection.execute(_BY_TOKEN, {"token": token}).first()
        if (
            row is None
            or row.domain not in domains
            or row.deleted_at is not None
            or row.ciphertext is None
        ):
            raise TokenNotFound("no such token")
        expires = as_utc(row.expires_at)
        if expires is not None and expires <= self._clock():
            raise TokenExpired("this token has expired")
        return row

    def _decrypt(self, row: Row[Any]) -> Pan:
        version = int(row.key_version)
        try:
            clear = self._keyring.gcm(version).decrypt(
                bytes(row.nonce), bytes(row.ciphertext), pan_aad(row.id, row.token, version)
            )
        except InvalidTag:
            raise IntegrityError(
                "the stored ciphertext failed authentication (altered or moved)"
            ) from None
        return Pan(clear.decode("ascii"))

    def _reveal(
        self,
        ctx: CallContext,
        token_list: Sequence[str],
        action: Action,
        *,
        masked_only: bool = False,
        batch: bool = False,
    ) -> list[Revealed]:
        """The one reveal path: a single call is a batch of one. Charges one rate unit
        per token and (for detokenize) one unit of the daily quota."""
        rules = self._authorize(ctx, action)
        reveal = Reveal.MASKED if masked_only else rules.reveal
        domains = self._policy.readable_domains(ctx.identity)
        reveals = len(token_list) if action is Action.DETOKENIZE else 0

        def work(connection: Connection) -> list[Revealed]:
            self._charge(connection, ctx, rules, cost=len(token_list), reveals=reveals)
            out, events = [], []
            for index, token in enumerate(token_list):
                try:
                    row = self._live_row(connection, token, domains)
                    pan = self._decrypt(row)
                except (TokenNotFound, TokenExpired, IntegrityError) as exc:
                    raise self._item_error(exc, index, batch=batch) from None
                details: dict[str, DetailValue] = {"reveal": reveal.value}
                if batch:
                    details["batch_index"] = index
                events.append(
                    self._audit_event(
                        ctx, action, Outcome.SUCCESS, token_id=row.id, details=details
                    )
                )
                out.append(
                    Revealed(
                        token=token,
                        masked=pan.masked(),
                        pan=pan if reveal is Reveal.FULL else None,
                    )
                )
            self._audit.append_many(connection, events)
            return out

        with self._audited_refusal(ctx, action):
            return self._transaction(work)

    def detokenize(self, ctx: CallContext, token: str) -> Revealed:
        """Return the PAN behind `token` if the caller's policy reveals it in full, else
        only the masked PAN. Raises `PolicyDenied`, `TokenNotFound` (also for a token of
        a domain the caller may not read), `TokenExpired`, `IntegrityError`,
        `RateLimited`, `QuotaExceeded`, `StorageUnavailable`, `AuditWriteFailed`,
        `HSMUnavailable`."""
        return self._reveal(ctx, [token], Action.DETOKENIZE)[0]

    def detokenize_masked(self, ctx: CallContext, token: str) -> Revealed:
        """Return only the masked PAN (BIN6 and last four) behind `token`."""
        return self._reveal(ctx, [token], Action.DETOKENIZE_MASKED, masked_only=True)[0]

    def detokenize_batch(self, ctx: CallContext, token_list: Sequence[str]) -> list[Revealed]:
        """Detokenize every token, all or nothing, in order. Raises `BatchItemInvalid`
        naming the first token that is missing, expired or fails authentication."""
        if not 1 <= len(token_list) <= MAX_BATCH:
            self._authorize(ctx, Action.DETOKENIZE)
            raise BatchItemInvalid(0, "invalid_request", f"a batch has 1 to {MAX_BATCH} items")
        return self._reveal(ctx, token_list, Action.DETOKENIZE, batch=True)

    # ------------------------------------------------------------------ lookup, metadata
    def lookup(
        self, ctx: CallContext, pan: Pan, token_format: str | None = None
    ) -> list[TokenRecord]:
        """Return the live tokens of `pan` in the caller's own domain (in `token_format`,
        or all formats). Its answer depends on what the vault holds, so the oracle guard
        counts it. Raises `PolicyDenied`, `InvalidPan`, `RateLimited`, `OracleSuspected`,
        `StorageUnavailable`, `HSMUnavailable`."""
        rules = self._authorize(ctx, Action.LOOKUP)
        domain = rules.domain_of(ctx.identity)
        with self._audited_refusal(ctx, Action.LOOKUP):
            self._check_luhn(pan)
            fingerprints = self._fingerprints(pan.reveal())

            def work(connection: Connection) -> list[TokenRecord]:
                now = self._clock()
                self._charge(connection, ctx, rules)
                self._limits.watch(
                    connection,
                    ctx.identity,
                    rules.oracle_guard,
                    [(oracle_bucket(pan), fingerprints[-1])],
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
                ]
                self._audit.append(
                    connection,
                    self._audit_event(
                        ctx, Action.LOOKUP, Outcome.SUCCESS, details={"found": len(rows)}
                    ),
                )
                return [self._record(r) for r in rows]

            return self._transaction(work)

    def token_info(self, ctx: CallContext, token: str) -> TokenRecord:
        """Return the token's format, dates and metadata (never the PAN), for a token of
        a domain the caller may read."""
        rules = self._authorize(ctx, Action.METADATA)
        domains = self._policy.readable_domains(ctx.identity)

        def work(connection: Connection) -> TokenRecord:
            self._charge(connection, ctx, rules)
            row = self._live_row(connection, token, domains)
            self._audit.append(
                connection,
                self._audit_event(ctx, Action.METADATA, Outcome.SUCCESS, token_id=row.id),
            )
            return self._record(row)

        with self._audited_refusal(ctx, Action.METADATA):
            return self._transaction(work)

    # ------------------------------------------------------------------ relay
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

    # ------------------------------------------------------------------ audit access
    def evidence_export(self, ctx: CallContext, period: str, build: Callable[[], T]) -> T:
        """Authorise an evidence export, record the read (``evidence.read``), run `build`
        and record the outcome (``evidence.export``): a failed build is recorded as
        failed (with its error code) and re-raised; the success entry is durable before
        the result is returned.

        Raises `PolicyDenied`, `RateLimited`, what `build` raises, `AuditWriteFailed`.
        """
        self._authorize(ctx, Action.EVIDENCE_EXPORT)
        details: dict[str, DetailValue] = {"period": period[:128]}
        # Like the relay's reveal, the read of the audit trail is recorded before it
        # happens (so a bundle of a period that includes now holds its own export).
        self._write_audit(self._audit_event(ctx, "evidence.read", Outcome.SUCCESS, details=details))
        try:
            result = build()
        except Exception as exc:
            details["error"] = exc.code if isinstance(exc, CofreError) else "internal_error"
            self._write_audit(
                self._audit_event(ctx, "evidence.export", Outcome.FAILED, details=details)
            )
            raise
        self._write_audit(
            self._audit_event(ctx, "evidence.export", Outcome.SUCCESS, details=details)
        )
        return result

    def record(self, event: AuditEvent) -> None:
        """Write `event` durably in its own transaction (the API's entry for a request
        that ended before any operation ran). Raises `AuditWriteFailed`,
        `StorageUnavailable`."""
        self._write_audit(event)

    def audit_read(self, ctx: CallContext, what: str) -> None:
        """Authorise reading the audit log (heads, proofs, exports) and record it."""
        self._authorize(ctx, Action.AUDIT_READ)
        self._write_audit(
            self._audit_event(ctx, Action.AUDIT_READ, Outcome.SUCCESS, details={"what": what})
        )

    # ------------------------------------------------------------------ delete, purge
    @staticmethod
    def _shred(connection: Connection, token_id: str, now: datetime) -> None:
        connection.execute(
            update(tokens)
            .where(tokens.c.id == token_id)
            .values(
                ciphertext=None,
                nonce=None,
                fingerprint=None,
                key_version=None,
                deleted_at=now,
            )
        )

    def delete(self, ctx: CallContext, token: str) -> bool:
        """Crypto-shred `token`: its ciphertext and fingerprint are erased, a tombstone
        and the audit trail remain. Returns False if it was already deleted.
        Raises `TokenNotFound` for a token that never existed or that another domain
        owns (a write never crosses domains, and the answer does not say which)."""
        rules = self._authorize(ctx, Action.DELETE)
        domain = rules.domain_of(ctx.identity)

        def work(connection: Connection) -> bool:
            self._charge(connection, ctx, rules)
            row = connection.execute(
                select(tokens.c.id, tokens.c.deleted_at, tokens.c.domain).where(
                    tokens.c.token == token
                )
            ).first()
            if row is None or row.domain != domain:
                raise TokenNotFound("no such token")
            already = row.deleted_at is not None
            if not already:
                self._shred(connection, row.id, self._clock())
            self._audit.append(
                connection,
                self._audit_event(
                    ctx,
                    Action.DELETE,
                    Outcome.SUCCESS,
                    token_id=row.id,
                    details={"result": "already deleted" if already else "shredded"},
                ),
            )
            return not already

        with self._audited_refusal(ctx, Action.DELETE):
            return self._transaction(work)

    def purge_expired(self, *, actor: str = "cofre purge", batch: int = 500) -> int:
        """Crypto-shred every expired token (each one audited) and forget rate-limit and
        oracle-guard windows that have ended; return how many tokens were shredded.

        On PostgreSQL one node at a time purges: each batch runs under a
        transaction-scoped advisory lock, and a node that does not get it stops (the
        holder is already purging). Raises `StorageUnavailable`."""
        total = 0
        while True:
            now = self._clock()

            def work(connection: Connection, now: datetime = now, first: bool = not total) -> int:
                if (
                    connection.dialect.name == "postgresql"
                    and not connection.execute(
                        text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _PURGE_LOCK_KEY}
                    ).scalar()
                ):
                    return -1  # another node holds the purge
                if first:
                    self._limits.purge_windows(connection, now, keep_seconds=MAX_WINDOW_SECONDS)
                rows = (
                    connection.execute(
                        select(tokens.c.id)
                        .where(and_(tokens.c.expires_at <= now, tokens.c.deleted_at.is_(None)))
                        .limit(batch)
                    )
                    .scalars()
                    .all()
                )
                for token_id in rows:
                    self._shred(connection, token_id, now)
                    self._audit.append(
                        connection,
                        AuditEvent(
                            action="purge",
                            outcome=Outcome.SUCCESS,
                            actor=actor,
                            token_id=token_id,
                            details={"reason": "expired"},
                        ),
                    )
                return len(rows)

            count = self._transaction(work)
            if count < 0:
                return total
            total += count
            if count < batch:
                return total
