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
from sqlalchemy import Connection, Engine, Row, and_, bindparam, insert, select, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import IntegrityError as SQLIntegrityError

from audit.log import AuditEvent, AuditLog, DetailValue, Outcome
from cofre.dberrors import db_error_name
from cofre.errors import CofreError
from cofre.redaction import mask_pan_like
from hsm.keys import KeyHierarchy, KeyKind, key_label
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.errors import PolicyDenied
from policies.formats import Dedup, FormatSpec, FormatType, LuhnMode
from policies.models import Action, IdentityPolicy, RelayRoute, Reveal
from vault.errors import (
    BatchItemInvalid,
    IdempotencyConflict,
    IntegrityError,
    InvalidMetadata,
    InvalidTTL,
    RelayBodyInvalid,
    StorageUnavailable,
    TokenExpired,
    TokenNotFound,
    TokenSpaceExhausted,
    VaultError,
)
from vault.keyring import DataKeyring, KeyPurpose, pan_aad
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
# The hot path's statements, built once: building and cache-keying a statement per call
# cost more Python time than running it.
_INSERT_TOKEN: Final = insert(tokens)
_TAKEN: Final = select(tokens.c.token).where(tokens.c.token.in_(bindparam("chunk", expanding=True)))
_HELD: Final = (
    select(tokens.c.id).where(tokens.c.fingerprint.in_(bindparam("fps", expanding=True))).limit(1)
)
_CONVERGENT: Final = select(tokens).where(
    tokens.c.format == bindparam("format"),
    tokens.c.fingerprint.in_(bindparam("fps", expanding=True)),
    tokens.c.convergent,
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
        count: bool = True,
    ) -> IdentityPolicy:
        """Authorise the call and (if `count`) charge it to the caller's rate limit;
        audit and re-raise a denial."""
        self._ensure_initialized()
        try:
            rules = self._policy.authorize(ctx.identity, action, token_format=token_format)
        except PolicyDenied as exc:
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
        if count:
            self._policy.check_rate(ctx.identity)
        return rules

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

    def _audit_failure(
        self, ctx: CallContext, action: Action, error: CofreError, token_id: str | None = None
    ) -> None:
        self._write_audit(
            self._audit_event(
                ctx, action, Outcome.FAILED, token_id=token_id, details={"error": error.code}
            )
        )

    # ------------------------------------------------------------------ tokenize
    def _prepare(
        self, ctx: CallContext, request: TokenizeRequest, *, count: bool = True
    ) -> tuple[FormatSpec, str]:
        self._authorize(ctx, Action.TOKENIZE, token_format=request.format, count=count)
        spec = self._policy.token_format(request.format)
        check_applicable(spec, request.pan)
        metadata = validate_metadata(request.metadata)
        _expiry(self._clock(), request.ttl_seconds)
        key = request.idempotency_key
        if key is not None and not 1 <= len(key) <= 128:
            raise InvalidMetadata("idempotency keys must be 1 to 128 characters")
        if key is not None and mask_pan_like(key) != key:
            # It is stored in clear beside the token, like metadata.
            raise InvalidMetadata("an idempotency key must not look like a card number")
        return spec, metadata

    def tokenize(self, ctx: CallContext, request: TokenizeRequest) -> TokenRecord:
        """Return the token for `request.pan` in `request.format`, stored and audited.

        Raises `PolicyDenied`, `RateLimited`, `FormatNotApplicable`, `InvalidMetadata`,
        `InvalidTTL`, `IdempotencyConflict`, `TokenSpaceExhausted`, `StorageUnavailable`,
        `AuditWriteFailed`, `HSMUnavailable`.
        """
        spec, metadata = self._prepare(ctx, request)
        fingerprint = self._fingerprint(request.pan.reveal())
        return self._transaction(
            lambda connection: self._tokenize_in(
                connection, ctx, request, spec=spec, metadata=metadata, fingerprint=fingerprint
            )
        )

    def tokenize_batch(
        self, ctx: CallContext, requests: Sequence[TokenizeRequest]
    ) -> list[TokenRecord]:
        """Tokenize every request, all or nothing, results in order.

        Raises `BatchItemInvalid` naming the first invalid item (nothing is written), or
        what `tokenize` raises for the batch as a whole.
        """
        if not 1 <= len(requests) <= MAX_BATCH:
            raise BatchItemInvalid(0, "invalid_request", f"a batch has 1 to {MAX_BATCH} items")
        # One batch is one call against the rate limit.
        self._authorize(ctx, Action.TOKENIZE, token_format=requests[0].format)
        prepared = []
        for index, request in enumerate(requests):
            try:
                prepared.append(self._prepare(ctx, request, count=False))
            except PolicyDenied:
                raise
            except VaultError as exc:
                raise BatchItemInvalid(index, exc.code, str(exc)) from None
        fingerprints = [self._fingerprint(r.pan.reveal()) for r in requests]

        def work(connection: Connection) -> list[TokenRecord]:
            one_by_one = any(r.idempotency_key is not None for r in requests) or (
                len(self._fingerprint_versions()) > 1  # a fingerprint rotation is migrating
            )
            if one_by_one:
                return [
                    self._tokenize_in(
                        connection,
                        ctx,
                        request,
                        spec=spec,
                        metadata=metadata,
                        fingerprint=fingerprint,
                    )
                    for request, (spec, metadata), fingerprint in zip(
                        requests, prepared, fingerprints, strict=True
                    )
                ]
            return self._tokenize_many(connection, ctx, requests, prepared, fingerprints)

        return self._transaction(work)

    def _tokenize_many(
        self,
        connection: Connection,
        ctx: CallContext,
        requests: Sequence[TokenizeRequest],
        prepared: Sequence[tuple[FormatSpec, str]],
        fingerprints: Sequence[tuple[bytes, int]],
    ) -> list[TokenRecord]:
        """The batch path: the same rules as `_tokenize_in`, in a handful of statements
        for the whole batch instead of five per item."""
        now = self._clock()
        convergent = [
            spec.dedup is Dedup.CONVERGENT or spec.type is FormatType.FPE for spec, _ in prepared
        ]
        existing: dict[tuple[str, bytes], Row[Any]] = {}
        wanted = sorted(
            {fp for (fp, _), conv in zip(fingerprints, convergent, strict=True) if conv}
        )
        for start in range(0, len(wanted), 500):
            for row in connection.execute(
                select(tokens).where(
                    tokens.c.convergent, tokens.c.fingerprint.in_(wanted[start : start + 500])
                )
            ):
                existing[(row.format, bytes(row.fingerprint))] = row
        results: list[TokenRecord | None] = [None] * len(requests)
        events: list[AuditEvent] = []
        fresh: dict[int, str] = {}  # item index -> candidate token
        first_for: dict[tuple[str, bytes], int] = {}
        for index, request in enumerate(requests):
            spec = prepared[index][0]
            fp = fingerprints[index][0]
            key = (request.format, fp)
            if convergent[index]:
                found = existing.get(key)
                if found is not None:
                    expires = as_utc(found.expires_at)
                    if expires is not None and expires <= now:
                        # Rare: let the one-by-one path shred and replace it.
                        results[index] = self._tokenize_in(
                            connection,
                            ctx,
                            request,
                            spec=spec,
                            metadata=prepared[index][1],
                            fingerprint=fingerprints[index],
                        )
                        existing.pop(key)
                        first_for[key] = index
                        continue
                    results[index] = self._record(found, existing=True)
                    events.append(
                        self._audit_event(
                            ctx,
                            Action.TOKENIZE,
                            Outcome.SUCCESS,
                            token_id=found.id,
                            details={"format": found.format, "result": "convergent"},
                        )
                    )
                    continue
                if key in first_for:
                    continue  # filled from the first item with this PAN, below
                first_for[key] = index
            fresh[index] = self._first_candidate(spec, request.pan)
        if fresh:
            self._settle_candidates(connection, fresh, requests, prepared)
        version = self._keyring.active_version(KeyPurpose.PAN_GCM)
        cipher = self._keyring.gcm(version)
        rows = []
        for index, token in fresh.items():
            request = requests[index]
            token_id = str(uuid.uuid4())
            nonce = secrets.token_bytes(12)
            expires_at = _expiry(now, request.ttl_seconds)
            rows.append(
                {
                    "id": token_id,
                    "token": token,
                    "format": request.format,
                    "convergent": convergent[index],
                    "fingerprint": fingerprints[index][0],
                    "fp_version": fingerprints[index][1],
                    "key_version": version,
                    "nonce": nonce,
                    "ciphertext": cipher.encrypt(
                        nonce,
                        request.pan.reveal().encode("ascii"),
                        pan_aad(token_id, token, version),
                    ),
                    "metadata": prepared[index][1],
                    "owner": ctx.identity,
                    "idempotency_key": None,
                    "created_at": now,
                    "expires_at": expires_at,
                }
            )
            results[index] = TokenRecord(
                token=token,
                token_id=token_id,
                format=request.format,
                created_at=now,
                expires_at=expires_at,
                metadata=json.loads(prepared[index][1]),
                existing=False,
            )
            events.append(
                self._audit_event(
                    ctx,
                    Action.TOKENIZE,
                    Outcome.SUCCESS,
                    token_id=token_id,
                    details={"format": request.format, "result": "new"},
                )
            )
        if rows:
            connection.execute(insert(tokens), rows)
        for index, request in enumerate(requests):
            if results[index] is None:  # the same PAN and format earlier in this batch
                first = results[first_for[(request.format, fingerprints[index][0])]]
                assert first is not None  # noqa: S101 - set in the loop above
                results[index] = dataclasses.replace(first, existing=True)
                events.append(
                    self._audit_event(
                        ctx,
                        Action.TOKENIZE,
                        Outcome.SUCCESS,
                        token_id=first.token_id,
                        details={"format": first.format, "result": "convergent"},
                    )
                )
        self._audit.append_many(connection, events)
        return [r for r in results if r is not None]

    def _first_candidate(self, spec: FormatSpec, pan: Pan) -> str:
        if spec.type is FormatType.UUID:
            return uuid_token()
        if spec.type is FormatType.FPE:
            version = self._keyring.active_version(KeyPurpose.FF1)
            return FpeTokenizer(self._keyring.ff1(version)).encrypt(spec, pan)
        return next(random_token_candidates(spec, pan))

    def _settle_candidates(
        self,
        connection: Connection,
        fresh: dict[int, str],
        requests: Sequence[TokenizeRequest],
        prepared: Sequence[tuple[FormatSpec, str]],
    ) -> None:
        """Replace every candidate that is taken (in the store or earlier in the batch)
        or that equals a held PAN, one by one; the rest were checked in one query."""
        values = list(fresh.values())
        taken: set[str] = set()
        for start in range(0, len(values), 500):
            taken.update(
                connection.execute(
                    select(tokens.c.token).where(tokens.c.token.in_(values[start : start + 500]))
                ).scalars()
            )
        used: set[str] = set()
        for index, candidate in list(fresh.items()):
            spec = prepared[index][0]
            check_pans = spec.type is not FormatType.UUID and spec.luhn is not LuhnMode.FAIL
            token = candidate
            if (
                candidate in taken
                or candidate in used
                or (check_pans and self._is_held_pan(connection, candidate))
            ):
                token = self._new_token(connection, spec, requests[index].pan, avoid=used)
            fresh[index] = token
            used.add(token)

    def _tokenize_in(
        self,
        connection: Connection,
        ctx: CallContext,
        request: TokenizeRequest,
        *,
        spec: FormatSpec,
        metadata: str,
        fingerprint: tuple[bytes, int],
    ) -> TokenRecord:
        now = self._clock()
        fp, fp_version = fingerprint
        # While a fingerprint rotation migrates, a stored row may carry either key's HMAC.
        known_fps = (
            [fp]
            if len(self._fingerprint_versions()) == 1
            else self._fingerprints(request.pan.reveal())
        )
        if request.idempotency_key is not None:
            previous = connection.execute(
                select(tokens).where(
                    tokens.c.owner == ctx.identity,
                    tokens.c.idempotency_key == request.idempotency_key,
                )
            ).first()
            if previous is not None:
                if previous.fingerprint not in known_fps or previous.format != request.format:
                    raise IdempotencyConflict(
                        "this idempotency key was used for another PAN or format"
                    )
                return self._answer_existing(connection, ctx, previous, "idempotent")
        convergent = spec.dedup is Dedup.CONVERGENT or spec.type is FormatType.FPE
        if convergent:
            existing = connection.execute(
                _CONVERGENT, {"format": request.format, "fps": known_fps}
            ).first()
            if existing is not None:
                expires = as_utc(existing.expires_at)
                if expires is None or expires > now:
                    return self._answer_existing(connection, ctx, existing, "convergent")
                self._shred(connection, existing.id, now)
                self._audit.append(
                    connection,
                    self._audit_event(
                        ctx,
                        "purge",
                        Outcome.SUCCESS,
                        token_id=existing.id,
                        details={"reason": "expired, replaced by a new token"},
                    ),
                )

        token = self._new_token(connection, spec, request.pan)
        token_id = str(uuid.uuid4())
        version = self._keyring.active_version(KeyPurpose.PAN_GCM)
        nonce = secrets.token_bytes(12)
        ciphertext = self._keyring.gcm(version).encrypt(
            nonce, request.pan.reveal().encode("ascii"), pan_aad(token_id, token, version)
        )
        expires_at = _expiry(now, request.ttl_seconds)
        connection.execute(
            _INSERT_TOKEN,
            {
                "id": token_id,
                "token": token,
                "format": request.format,
                "convergent": convergent,
                "fingerprint": fp,
                "fp_version": fp_version,
                "key_version": version,
                "nonce": nonce,
                "ciphertext": ciphertext,
                "metadata": metadata,
                "owner": ctx.identity,
                "idempotency_key": request.idempotency_key,
                "created_at": now,
                "expires_at": expires_at,
            },
        )
        self._audit.append(
            connection,
            self._audit_event(
                ctx,
                Action.TOKENIZE,
                Outcome.SUCCESS,
                token_id=token_id,
                details={"format": request.format, "result": "new"},
            ),
        )
        return TokenRecord(
            token=token,
            token_id=token_id,
            format=request.format,
            created_at=now,
            expires_at=expires_at,
            metadata=json.loads(metadata),
            existing=False,
        )

    def _answer_existing(
        self, connection: Connection, ctx: CallContext, row: Row[Any], result: str
    ) -> TokenRecord:
        self._audit.append(
            connection,
            self._audit_event(
                ctx,
                Action.TOKENIZE,
                Outcome.SUCCESS,
                token_id=row.id,
                details={"format": row.format, "result": result},
            ),
        )
        return self._record(row, existing=True)

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
        self, connection: Connection, spec: FormatSpec, pan: Pan, avoid: set[str] | None = None
    ) -> str:
        if spec.type is FormatType.UUID:
            candidates: Iterator[str] = iter([uuid_token(), uuid_token(), uuid_token()])
        elif spec.type is FormatType.FPE:
            version = self._keyring.active_version(KeyPurpose.FF1)
            candidates = iter([FpeTokenizer(self._keyring.ff1(version)).encrypt(spec, pan)])
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
    def _live_row(self, connection: Connection, token: str) -> Row[Any]:
        if not 1 <= len(token) <= 64:
            raise TokenNotFound("no such token")
        row = connection.execute(_BY_TOKEN, {"token": token}).first()
        if row is None or row.deleted_at is not None or row.ciphertext is None:
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

    def _reveal(self, ctx: CallContext, token: str, action: Action, reveal: Reveal) -> Revealed:
        def work(connection: Connection) -> Revealed:
            row = self._live_row(connection, token)
            pan = self._decrypt(row)
            self._audit.append(
                connection,
                self._audit_event(
                    ctx, action, Outcome.SUCCESS, token_id=row.id, details={"reveal": reveal.value}
                ),
            )
            return Revealed(
                token=token, masked=pan.masked(), pan=pan if reveal is Reveal.FULL else None
            )

        try:
            return self._transaction(work)
        except (TokenNotFound, TokenExpired, IntegrityError) as exc:
            self._audit_failure(ctx, action, exc)
            raise

    def detokenize(self, ctx: CallContext, token: str) -> Revealed:
        """Return the PAN behind `token` if the caller's policy reveals it in full, else
        only the masked PAN. Raises `PolicyDenied`, `TokenNotFound`, `TokenExpired`,
        `IntegrityError`, `StorageUnavailable`, `AuditWriteFailed`, `HSMUnavailable`."""
        rules = self._authorize(ctx, Action.DETOKENIZE)
        return self._reveal(ctx, token, Action.DETOKENIZE, rules.reveal)

    def detokenize_masked(self, ctx: CallContext, token: str) -> Revealed:
        """Return only the masked PAN (BIN6 and last four) behind `token`."""
        self._authorize(ctx, Action.DETOKENIZE_MASKED)
        return self._reveal(ctx, token, Action.DETOKENIZE_MASKED, Reveal.MASKED)

    def detokenize_batch(self, ctx: CallContext, token_list: Sequence[str]) -> list[Revealed]:
        """Detokenize every token, all or nothing, in order. Raises `BatchItemInvalid`
        naming the first token that is missing, expired or fails authentication."""
        rules = self._authorize(ctx, Action.DETOKENIZE)
        if not 1 <= len(token_list) <= MAX_BATCH:
            raise BatchItemInvalid(0, "invalid_request", f"a batch has 1 to {MAX_BATCH} items")

        def work(connection: Connection) -> list[Revealed]:
            out = []
            for index, token in enumerate(token_list):
                try:
                    row = self._live_row(connection, token)
                    pan = self._decrypt(row)
                except (TokenNotFound, TokenExpired, IntegrityError) as exc:
                    raise BatchItemInvalid(index, exc.code, str(exc)) from None
                self._audit.append(
                    connection,
                    self._audit_event(
                        ctx,
                        Action.DETOKENIZE,
                        Outcome.SUCCESS,
                        token_id=row.id,
                        details={"reveal": rules.reveal.value, "batch_index": index},
                    ),
                )
                out.append(
                    Revealed(
                        token=token,
                        masked=pan.masked(),
                        pan=pan if rules.reveal is Reveal.FULL else None,
                    )
                )
            return out

        try:
            return self._transaction(work)
        except BatchItemInvalid as exc:
            self._audit_failure(ctx, Action.DETOKENIZE, exc)
            raise

    # ------------------------------------------------------------------ lookup, metadata
    def lookup(
        self, ctx: CallContext, pan: Pan, token_format: str | None = None
    ) -> list[TokenRecord]:
        """Return the live tokens of `pan` (in `token_format`, or all formats)."""
        self._authorize(ctx, Action.LOOKUP)
        fingerprints = self._fingerprints(pan.reveal())
        now = self._clock()

        def work(connection: Connection) -> list[TokenRecord]:
            query = select(tokens).where(
                tokens.c.fingerprint.in_(fingerprints), tokens.c.deleted_at.is_(None)
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
        """Return the token's format, dates and metadata (never the PAN)."""
        self._authorize(ctx, Action.METADATA)

        def work(connection: Connection) -> TokenRecord:
            row = self._live_row(connection, token)
            self._audit.append(
                connection,
                self._audit_event(ctx, Action.METADATA, Outcome.SUCCESS, token_id=row.id),
            )
            return self._record(row)

        try:
            return self._transaction(work)
        except (TokenNotFound, TokenExpired) as exc:
            self._audit_failure(ctx, Action.METADATA, exc)
            raise

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
        self._authorize(ctx, Action.RELAY)
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
                    self._reveal_for_relay, ctx=ctx, route=route, body=body, details=details
                )
            )
        except (RelayBodyInvalid, TokenNotFound, TokenExpired, IntegrityError) as exc:
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
        route: RelayRoute,
        body: Any,
        details: Mapping[str, DetailValue],
    ) -> tuple[Any, list[str]]:
        """The body to send (a copy, the PANs in place of the tokens) and the revealed
        token ids, with one `relay.send` entry per revealed token written in the same
        transaction (one without a token id when the route reveals none)."""
        outgoing = copy.deepcopy(body)  # the caller's body keeps its tokens
        token_ids: list[str] = []
        events: list[AuditEvent] = []
        for pointer in route.detokenize:
            token = get_pointer(body, pointer)
            if not isinstance(token, str):
                raise RelayBodyInvalid(f"the body has no token at {pointer}")
            row = self._live_row(connection, token)
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
            spec = self._policy.token_format(token_format)
            request = TokenizeRequest(pan=pan, format=token_format)
            fingerprint = self._fingerprint(pan.reveal())
            record = self._transaction(
                functools.partial(
                    self._tokenize_in,
                    ctx=ctx,
                    request=request,
                    spec=spec,
                    metadata="{}",
                    fingerprint=fingerprint,
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
        Raises `TokenNotFound` for a token that never existed."""
        self._authorize(ctx, Action.DELETE)

        def work(connection: Connection) -> bool:
            row = connection.execute(
                select(tokens.c.id, tokens.c.deleted_at).where(tokens.c.token == token)
            ).first()
            if row is None:
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

        try:
            return self._transaction(work)
        except TokenNotFound as exc:
            self._audit_failure(ctx, Action.DELETE, exc)
            raise

    def purge_expired(self, *, actor: str = "cofre purge", batch: int = 500) -> int:
        """Crypto-shred every expired token (each one audited); return how many."""
        total = 0
        while True:
            now = self._clock()

            def work(connection: Connection, now: datetime = now) -> int:
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
            total += count
            if count < batch:
                return total
