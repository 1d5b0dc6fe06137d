"""What every vault operation shares: the transaction, the audit entry, authorisation,
limits and the row helpers (the fingerprints: `vault._fingerprints`).

IN PCI SCOPE, holds card data. `VaultCore` is the base of the operation classes in
`vault/operations/`; `vault.service.VaultService` puts them together. Every operation:

1. authorises the caller against the policy (raises `PolicyDenied`, which is audited);
2. does its work and writes its audit entry **in one database transaction**, so nothing
   is returned that is not durably stored and audited (fail closed: if the entry cannot
   be written, the transaction rolls back and the caller gets `AuditWriteFailed`);
3. translates database failures into `StorageUnavailable`; HSM failures arrive as
   `hsm.errors.HSMUnavailable`.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

from cryptography.exceptions import InvalidTag
from sqlalchemy import Connection, Engine, Row, select, update
from sqlalchemy.exc import DataError as SQLDataError
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import IntegrityError as SQLIntegrityError

from audit.log import AuditEvent, AuditLog, DetailValue, Outcome, sieved
from cofre.blocking import may_block
from cofre.dberrors import db_error_name
from cofre.errors import CofreError
from hsm.keys import KeyHierarchy, code_epoch_label
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.errors import PolicyDenied, RateLimited
from policies.models import Action, IdentityPolicy, RateLimit
from vault._fingerprints import Fingerprints
from vault._named_refusals import named_record
from vault._suspected_buckets import SuspectedBuckets
from vault._token_guesses import GuessedBuckets
from vault.card import CardBundle, SecurityCode
from vault.errors import (
    BatchItemInvalid,
    IntegrityError,
    InvalidInput,
    InvalidPan,
    StaleRead,
    StorageUnavailable,
    Throttled,
    TokenExpired,
    TokenNotFound,
    VaultError,
)
from vault.keyring import DataKeyring, KeyPurpose, open_pan
from vault.limits import IDEMPOTENCY_WINDOW, MAX_IDEMPOTENCY_WINDOW, MIN_IDEMPOTENCY_WINDOW, Limits
from vault.models import CallContext, TokenRecord
from vault.pan import Pan
from vault.policy_record import policy_event
from vault.relay_client import RelayClient
from vault.security_codes import MAX_TTL as MAX_CODE_TTL
from vault.security_codes import HeldCodes
from vault.storage.database import as_utc, readiness_connections, single_read
from vault.storage.groupcommit import GroupCommitter, Merge
from vault.storage.rawsql import fetch_records
from vault.storage.schema import tokens

T = TypeVar("T")
_TRANSACTION_ATTEMPTS: Final = 5


_RETRYABLE_SQLSTATES: Final = frozenset({"40P01", "40001"})  # deadlock, serialization


def _raise_input_error(exc: SQLDataError) -> None:
    """Raise `InvalidInput` when `exc` is PostgreSQL refusing a NUL in a string (psycopg
    says so before sending; in an array PostgreSQL answers 22021): the caller's input."""
    if "NUL" in str(exc.orig) or "0x00" in str(exc.orig):  # 22021 names the byte
        raise InvalidInput("a string holds a NUL character") from None


class VaultCore(Fingerprints):
    """Shared state and helpers of the vault's operations (one database, HSM, policy)."""

    def __init__(
        self,
        engine: Engine,
        provider: HSMProvider,
        policy: PolicyEngine,
        *,
        audit: AuditLog | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        group_commit: bool = True,
        security_code_ttl: timedelta = MAX_CODE_TTL,
        idempotency_window: timedelta = IDEMPOTENCY_WINDOW,
        insecure_seal_without_domain: bool = False,
    ) -> None:
        self._engine = engine
        self._reader = single_read(engine)  # built once; one round trip on PG
        self._committer = GroupCommitter(engine) if group_commit else None
        self._relay_client = RelayClient()
        self._provider = provider
        self._policy = policy
        self._audit = audit or AuditLog()
        self._clock = clock
        if not MIN_IDEMPOTENCY_WINDOW <= idempotency_window <= MAX_IDEMPOTENCY_WINDOW:
            raise ValueError("the idempotency key window is 1 to 168 hours")
        # How long an idempotency key's record answers (`vault.operations._idempotency`).
        self._key_window = idempotency_window
        self._keyring = DataKeyring(
            engine, provider, insecure_seal_without_domain=insecure_seal_without_domain
        )  # Its registry counts only what the policy's officers signed (session 40).
        self._keyring.registry.trust_officers(lambda: self._policy, None)
        self._codes = HeldCodes(
            engine, provider, self._keyring.registry, self._audit, ttl=security_code_ttl
        )
        self._hierarchy = KeyHierarchy(provider)
        self._limits = Limits()
        self._guessed = GuessedBuckets()  # `vault.operations._guesses`
        self._suspected = SuspectedBuckets()  # `vault.operations._early`
        self._fp_versions: list[int] | None = None
        self._fp_read = 0.0
        self._fp_lock = threading.Lock()
        self._initialized = False
        self._init_lock = threading.Lock()

    @property
    def keyring(self) -> DataKeyring:
        return self._keyring

    @property
    def hsm_is_local(self) -> bool:
        """Whether HSM calls are in-process (SoftHSM2), not a network round trip: only
        then may a tokenize begin on an event loop (`cofre.blocking`)."""
        return self._provider.local

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

    def _ensure_initialized(self) -> None:
        # The HSM may be down at the start; the first call after it creates what is missing.
        if not self._initialized:
            may_block()
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
        self._keyring.close()  # for good: a late worker unwraps nothing again

    @readiness_connections()  # its own connections: "the database answers", not "the pool is busy"
    def check_ready(self) -> dict[str, str]:
        """The checks, all "ok", or the first failing one's error (`HSMUnavailable`...)."""
        self._provider.health_check()
        with self._storage(), self._engine.connect() as connection:
            connection.execute(select(1))
        self._ensure_initialized()
        self._keyring.registry.check()  # raises KeyNotRegistered
        return {"hsm": "ok", "database": "ok", "key_registry": "ok"}

    @contextmanager
    def _storage(self, *, retryable: bool = False) -> Iterator[None]:
        may_block()  # every database access of a call's start is in one (`cofre.blocking`)
        try:
            yield
        except CofreError:
            raise
        except SQLIntegrityError:
            if retryable:
                raise  # a unique-key race that `_transaction` retries
            raise StorageUnavailable("the token store refused the write") from None
        except SQLDataError as exc:
            _raise_input_error(exc)
            raise StorageUnavailable(
                f"the token store is unavailable ({db_error_name(exc)})"
            ) from None
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

    def _transaction(self, work: Callable[[Connection], T], merge: Merge | None = None) -> T:
        """Run `work` in one transaction; retry on a unique-key race (another node took
        the same token or converged first). `merge`: how the group committer may run it
        with others of its kind (`vault.storage.groupcommit.Merge`)."""
        return self._settle(self._submit(work, merge), work, merge)

    def _submit(self, work: Callable[[Connection], T], merge: Merge | None = None) -> Future[T]:
        """The first attempt of `_transaction`, handed to the group committer without
        waiting for it (with no committer, run here: the future is done)."""
        if self._committer is not None:
            return self._committer.submit(work, merge)
        may_block()
        future: Future[T] = Future()
        future.set_running_or_notify_cancel()
        try:
            with self._engine.begin() as connection:
                result = work(connection)
            future.set_result(result)  # committed: the block's end is the COMMIT
        except Exception as exc:  # noqa: BLE001 - `_settle` raises it, translated
            future.set_exception(exc)
        return future

    def _settle(
        self, first: Future[T], work: Callable[[Connection], T], merge: Merge | None = None
    ) -> T:
        """What `_transaction` answers, given its first attempt (`_submit`): waits for
        it, then runs `work` again while a unique-key race or a deadlock undid it."""
        attempt, future = 1, first
        while True:
            try:
                with self._storage(retryable=True):
                    return future.result()
            except SQLIntegrityError:
                if attempt == _TRANSACTION_ATTEMPTS:
                    raise StorageUnavailable(
                        "the token store kept refusing the write (unique conflicts)"
                    ) from None
            except StaleRead:
                if attempt == _TRANSACTION_ATTEMPTS:
                    raise StorageUnavailable(
                        "the token kept changing under the call (concurrent writes)"
                    ) from None
            except DBAPIError as exc:
                # Two nodes' group commits can deadlock; PostgreSQL aborts one: run it again.
                if getattr(exc.orig, "sqlstate", None) not in _RETRYABLE_SQLSTATES or (
                    attempt == _TRANSACTION_ATTEMPTS
                ):
                    raise StorageUnavailable(
                        f"the token store is unavailable ({db_error_name(exc)})"
                    ) from None
            attempt += 1
            future = self._submit(work, merge)

    def _write_audit(self, event: AuditEvent) -> None:
        # Named for its token (session 40); a refusal sieve may count it (session 39).
        event = named_record(self._engine, event, self._policy)
        if sieved(event):
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
                    source=ctx.source,
                )
            )
            raise
        return rules

    @contextmanager
    def _audited_refusal(self, ctx: CallContext, action: Action | str) -> Iterator[None]:
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
                        token_id=exc.token_id if isinstance(exc, IntegrityError) else None,
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
        detokenize quota, inside the operation's transaction (a refusal rolls back).

        Inside a commit group's unguarded run both are made just before its commit,
        identities in one order (`Limits`): no caller sends anything before its commit.
        Session 37: charged at once, a metadata, lookup, delete, update, capture session
        or relay call locked its bucket row until the group's commit, so another
        worker's group with one call of that identity waited for the whole group, and
        two groups locking two identities in opposite orders deadlocked
        (`tests/vault/test_rate37_charge_locks.py`)."""
        now, identity = self._clock(), ctx.identity
        if rules.rate_limit is not None:
            self._limits.charge_rate(
                connection,
                identity,
                rules.rate_limit,
                cost,
                now.timestamp(),
                clock=lambda: self._clock().timestamp(),
                deferrable=True,
            )
        if reveals and (quota := rules.quota) is not None:
            self._limits.charge_quota(connection, identity, quota, reveals, now, deferrable=True)

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
            source=ctx.source,  # the call's one object: a batch's entries share it
        )

    def charge_rate(self, key: str, limit: RateLimit, cost: int = 1) -> None:
        """Charge `cost` to the rate limit named `key` (an identity, or an identity and
        a purpose such as evidence exports), in the database shared by every node, just
        before its commit group's commit (`_charge`). Raises `RateLimited` (nothing
        charged), `StorageUnavailable`."""

        def work(connection: Connection) -> None:
            now = self._clock().timestamp()
            self._limits.charge_rate(connection, key, limit, cost, now, deferrable=True)

        self._transaction(work)

    @staticmethod
    def _item_error(exc: VaultError, index: int, *, batch: bool) -> VaultError:
        return BatchItemInvalid(index, exc.code, str(exc)) if batch else exc

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

    def _live_row(
        self, connection: Connection, token: str, domains: frozenset[str], *, shared: bool = False
    ) -> Row[Any]:
        """The live row of `token` in one of `domains`. A token of another domain is
        answered exactly as a token that does not exist: no answer tells a caller what
        another domain holds. `shared`: on PostgreSQL, share-locked until the commit (a
        reveal, a relay: a delete or purge of the row then waits for the answer's commit,
        and one that committed first is seen; without it a reveal read the row, the
        delete was answered, and the PAN was answered after it, session 31). Only a row
        it answers: the lock is taken by a read that finds the row live in `domains`,
        and a miss is told from the row read without one (locked by the read itself, a
        miss on another domain's token held its owner's update, and one on an expired
        token held the purge's batch, until the caller's commit: session 31's review).
        SQLite's write transactions exclude each other already."""
        if not 1 <= len(token) <= 64:
            raise TokenNotFound("no such token")
        # On the driver's cursor (`vault.storage.rawsql`): every detokenize reads it.
        locking = shared and bool(domains) and connection.dialect.name == "postgresql"
        if locking:
            found = fetch_records(
                connection,
                tokens,
                "token = ? AND domain IN (?*) AND deleted_at IS NULL AND ciphertext IS NOT"
                " NULL AND (expires_at IS NULL OR expires_at > ?) FOR SHARE",
                [token, *sorted(domains), self._clock()],
                in_list=len(domains),
            )
            if found:
                live: Row[Any] = found[0]
                return live
        found = fetch_records(connection, tokens, "token = ?", [token])
        row: Row[Any] | None = found[0] if found else None
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
        if locking:
            raise StaleRead  # made live between the two reads: read it again, locked
        return row

    def _decrypt(self, row: Row[Any]) -> Pan:
        return self._open_card(row).pan

    def _open_card(self, row: Row[Any]) -> CardBundle:
        """The card bundle of a live row (a bare PAN for tokens without details).
        Raises `IntegrityError` when the ciphertext fails authentication."""
        version = int(row.key_version)
        try:
            clear = open_pan(self._keyring.gcm(version), row, version)
        except IntegrityError as exc:  # under a retired data key (session 38): named
            raise IntegrityError(str(exc), token_id=row.id) from None
        except InvalidTag:
            raise IntegrityError(
                "the stored ciphertext failed authentication (altered or moved)", token_id=row.id
            ) from None
        return CardBundle.open(clear)

    def _reseal(
        self, connection: Connection, row: Row[Any], card: CardBundle, *, replace: bool = True
    ) -> None:
        """Store `card` in the row, sealed under the active PAN data key with a fresh
        nonce: its details over the row's stored ones, or with `replace` false only
        those the row lacks (`CardBundle.filled_into`; no write when that is none).
        Written only over the sealing `row` holds (its nonce): a row read without a lock
        and sealed again, or shredded, since (PostgreSQL re-checks the condition on the
        row that write left) raises `StaleRead`: merged over stale details it lost
        another call's, and over a shredded row it put the card back (session 31)."""
        older = self._open_card(row)
        if replace:
            merged = card.merged_over(older)
        else:
            merged = card.filled_into(older, self._clock())
            if merged == older:
                return
        version = self._keyring.sealing_version(connection, KeyPurpose.PAN_GCM)
        nonce = secrets.token_bytes(12)
        sealed = self._keyring.gcm(version).encrypt(
            nonce, merged.seal(), self._keyring.sealing_aad(row.id, row.token, version, row.domain)
        )
        done = connection.execute(
            update(tokens)
            .where(tokens.c.id == row.id, tokens.c.nonce == row.nonce)
            .values(key_version=version, nonce=nonce, ciphertext=sealed)
        ).rowcount
        if not done:
            raise StaleRead

    def _hold_codes(
        self,
        connection: Connection,
        ctx: CallContext,
        codes: Sequence[tuple[SecurityCode | None, int | None, bool]],
        records: Sequence[TokenRecord],
        now: datetime,
    ) -> list[AuditEvent]:
        """Hold each item's security code (with its key epoch) for the token it got,
        replacing any code that token held, unless the item may not replace (its third
        part false: a shopper's capture, which fills in only what a stored token lacks,
        review 28b T1); return the audit entries that say so (never the code)."""
        events = []
        for (code, epoch, replaces), record in zip(codes, records, strict=True):
            if code is None or epoch is None:
                continue
            if (
                not replaces
                and record.existing
                and self._codes.holds(connection, record.token_id, now)
            ):
                continue  # the code the shop's backend holds for its next relay stays
            self._codes.hold(
                connection,
                token_id=record.token_id,
                token=record.token,
                code=code,
                epoch=epoch,
                now=now,
            )
            events.append(
                self._audit_event(
                    ctx,
                    "security_code.hold",
                    Outcome.SUCCESS,
                    token_id=record.token_id,
                    details={
                        "key": code_epoch_label(epoch),
                        "ttl_seconds": int(self._codes.ttl.total_seconds()),
                    },
                )
            )
        return events

    def _shred(
        self, connection: Connection, token_id: str, now: datetime, *, expired: bool = False
    ) -> bool:
        """Erase the row's card (ciphertext, nonce, fingerprint) and its held code;
        whether it did. `expired`: only while the row is live and its life has ended at
        `now` (the purge): its read took no lock, and an update or a convergent tokenize
        that lengthened the life may have committed since. PostgreSQL checks these
        conditions again on the row that write left (review 29c). A row shredded already
        is left as it is, and False (a delete and the purge, or two deletes, that read it
        live at once: the second wrote the tombstone again and said it shredded it,
        session 31)."""
        shred = update(tokens).where(tokens.c.id == token_id, tokens.c.deleted_at.is_(None))
        if expired:
            shred = shred.where(tokens.c.expires_at <= now)
        done = connection.execute(
            shred.values(
                ciphertext=None, nonce=None, fingerprint=None, key_version=None, deleted_at=now
            )
        ).rowcount
        if done:
            self._codes.discard(connection, token_id, now)
        return bool(done)
