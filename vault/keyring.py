"""Data keys: generated in the HSM, stored wrapped in ``data_keys``, unwrapped on demand
into process memory, and wiped on rotation and shutdown.

IN PCI SCOPE, holds key material (in memory only). Two purposes:

- ``pan_gcm``: the AES-256-GCM key that encrypts stored PANs;
- ``ff1``: the AES-256 key of FF1 tokens (`pan_fpe` formats).

Exactly one version per purpose is ``active`` (used for new data); older versions stay
``retiring`` until no record needs them, then ``destroyed`` (wrapped bytes erased). A
version the audit log records retired is never unwrapped or used again, whatever the
database says of it (`vault._retired_keys`: wrapped bytes restored from a backup).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, Engine, insert, select

from audit.schema import READ_ONLY
from hsm.keys import KeyKind, parse_key_label
from hsm.provider import HSMProvider, WrappedKey, wipe
from vault._retired_keys import retired_through
from vault.errors import DataKeyMissing, IntegrityError
from vault.fpe.ff1 import FF1
from vault.key_registry import KeyRegistry
from vault.storage.rawsql import fetch_all
from vault.storage.schema import data_keys

_log = structlog.get_logger("cofre.vault")
_ACTIVE_TTL_S = 1.0
# The active version of a purpose, read in a write transaction (`sealing_version`). FOR
# SHARE on PostgreSQL holds a rotation's retiring UPDATE until that transaction ends;
# SQLite has no row locks, and its BEGIN IMMEDIATE already keeps writers apart.
_SEALING_SQL = "SELECT version FROM data_keys WHERE purpose = ? AND state = ?"
_SEALING_SQL_POSTGRESQL = _SEALING_SQL + " FOR SHARE"
# Reads after an empty one on PostgreSQL (see `sealing_version`): each empty read means a
# rotation committed meanwhile, so more than one in a row is a vault with no active key.
_SEALING_REREADS = 2
# Where `sealing_version` keeps its read for the rest of a transaction (`Connection.info`,
# with the transaction it was read in: the pooled connection outlives it).
_SEALED = "cofre.sealing_version"


class KeyPurpose(StrEnum):
    PAN_GCM = "pan_gcm"
    FF1 = "ff1"


class KeyState(StrEnum):
    ACTIVE = "active"
    RETIRING = "retiring"
    RETIRED = "retired"
    DESTROYED = "destroyed"  # retired and its wrapped bytes erased


def pan_aad(token_id: str, token: str, version: int, domain: str) -> bytes:
    """The AES-GCM associated data of a stored PAN: binds the ciphertext to its row, its
    token, its key version and its token domain, so a ciphertext moved elsewhere, or its
    row moved to another domain, fails authentication (`open_pan`).

    The domain is bound since session 37: a writer of the database set a row's
    ``domain`` to one its own certificate may read in full, and the card opened for it.
    JSON keeps the fields apart whatever a domain holds."""
    fields = json.dumps([token_id, token, version, domain], separators=(",", ":"))
    return b"cofre:pan:v2|" + fields.encode()


def legacy_pan_aad(token_id: str, token: str, version: int) -> bytes:
    """The associated data of PANs sealed before session 37 (no domain): only opened,
    never sealed again (a data-key rotation reseals such rows with `pan_aad`)."""
    return f"cofre:pan:v1|{token_id}|{token}|{version}".encode()


def open_pan(cipher: AESGCM, row: Any, version: int) -> bytes:  # a `Row` of any columns
    """Return the plaintext of the PAN a token `row` (its ``id``, ``token``, ``domain``,
    ``nonce`` and ``ciphertext``) holds under data key `version`, sealed under `pan_aad`,
    or under `legacy_pan_aad` by a vault before session 37. Raises `InvalidTag` when it
    fails authentication under both.

    The fallback opens only what was sealed before the upgrade (this code seals with
    `pan_aad` alone, and neither authenticates the other's ciphertexts); such a row moved
    to another domain still opens there until a data-key rotation reseals it
    (docs/threat-model.md, "A writer of the database")."""
    nonce, sealed = bytes(row.nonce), bytes(row.ciphertext)
    try:
        return cipher.decrypt(nonce, sealed, pan_aad(row.id, row.token, version, row.domain))
    except InvalidTag:
        return cipher.decrypt(nonce, sealed, legacy_pan_aad(row.id, row.token, version))


@dataclass(frozen=True)
class DataKeyInfo:
    purpose: KeyPurpose
    version: int
    state: KeyState
    kek_label: str
    wrap_mechanism: str
    created_at: datetime
    retired_at: datetime | None


class DataKeyring:
    """The data keys of one vault database, unwrapped lazily through one HSM provider."""

    def __init__(
        self,
        engine: Engine,
        provider: HSMProvider,
        registry: KeyRegistry | None = None,
        *,
        insecure_seal_without_domain: bool = False,
    ) -> None:
        # The KEK is the newest *registered* one (never just the newest label).
        self.registry = registry or KeyRegistry(engine, provider)
        # Reads only: on SQLite they must not queue behind the caller's own write
        # transaction (the keyring is consulted from inside one).
        self._engine = engine.execution_options(**READ_ONLY)
        self._provider = provider
        self._lock = threading.Lock()
        self._clear: dict[tuple[KeyPurpose, int], bytearray] = {}
        self._active: dict[KeyPurpose, int] = {}
        self._active_read: dict[KeyPurpose, float] = {}
        # The cipher objects hold their own copies of the key (cryptography and FF1 need
        # bytes); dropping them on rotation is the most CPython allows.
        self._gcm: dict[int, AESGCM] = {}
        self._ff1: dict[int, FF1] = {}
        # Every version up to this one the audit log records retired (`_retired_keys`):
        # read at each unwrap, learnt from the rotation worker's pass, and checked at
        # every use (an integer compare), so a key held in memory is refused too.
        self._retired_through = 0
        # Set for good by `close` (the stop): from then on nothing is unwrapped again.
        self._closed = False
        # A rolling upgrade's escape (`sealing_aad`): seal as vaults before session 37.
        self._legacy_sealing = insecure_seal_without_domain
        if insecure_seal_without_domain:
            _log.warning(
                "COFRE_INSECURE__SEAL_CARDS_WITHOUT_DOMAIN is on: new cards are sealed "
                "without their token domain, as older vaults read them; turn it off once "
                "every node runs this version, then rotate the data keys"
            )

    def sealing_aad(self, token_id: str, token: str, version: int, domain: str) -> bytes:
        """The associated data to seal a PAN with: `pan_aad`, or `legacy_pan_aad` while
        ``COFRE_INSECURE__SEAL_CARDS_WITHOUT_DOMAIN`` is on (a rolling upgrade: nodes of
        the previous version, and a rollback to it, open only that; docs/operations.md)."""
        if self._legacy_sealing:
            return legacy_pan_aad(token_id, token, version)
        return pan_aad(token_id, token, version, domain)

    def ensure_active(self, connection: Connection) -> list[tuple[KeyPurpose, int]]:
        """Create version 1 of every purpose that has no key yet, in `connection`'s
        transaction; return what was created (the caller audits it)."""
        created = []
        kek = self.registry.current_label(KeyKind.KEK)
        for purpose in KeyPurpose:
            exists = connection.execute(
                select(data_keys.c.version).where(data_keys.c.purpose == purpose.value).limit(1)
            ).first()
            if exists is None:
                self.create_version(connection, purpose, 1, kek)
                created.append((purpose, 1))
        return created

    def create_version(
        self, connection: Connection, purpose: KeyPurpose, version: int, kek: str
    ) -> None:
        """Generate data key (`purpose`, `version`) in the HSM and store it wrapped under
        `kek`, active, in `connection`'s transaction."""
        wrapped = self._provider.generate_wrapped_key(kek)
        connection.execute(
            insert(data_keys).values(
                purpose=purpose.value,
                version=version,
                wrapped=wrapped.wrapped,
                wrap_mechanism=wrapped.algorithm,
                kek_label=wrapped.kek_label,
                algorithm="AES-256",
                state=KeyState.ACTIVE.value,
                created_at=datetime.now(UTC),
            )
        )

    def active_version(self, purpose: KeyPurpose) -> int:
        """Return the active version of `purpose`. Cached for a second, so a rotation
        approved on another node reaches this one within that time."""
        with self._lock:
            cached = self._active.get(purpose)
            fresh = time.monotonic() - self._active_read.get(purpose, 0.0) < _ACTIVE_TTL_S
        if cached is not None and fresh:
            return cached
        with self._engine.connect() as connection:
            version = connection.execute(
                select(data_keys.c.version).where(
                    data_keys.c.purpose == purpose.value,
                    data_keys.c.state == KeyState.ACTIVE.value,
                )
            ).scalar()
        return self._remember_active(purpose, version)

    def sealing_version(self, connection: Connection, purpose: KeyPurpose) -> int:
        """Return the active version of `purpose` for data about to be stored under it,
        read in `connection`'s write transaction rather than from the cache.

        Why: the cached `active_version` may be a second old, and a data rotation run on
        another node or worker can retire and erase the old version in less time than that
        (tens of rows take milliseconds); a row sealed under it would be lost for good. Read
        here, the version is still the active one when the row commits: on PostgreSQL the
        row lock (FOR SHARE) holds a rotation's retiring UPDATE until this transaction
        ends, so its re-encryption job sees the row; a SQLite write transaction (BEGIN
        IMMEDIATE) already excludes the rotation's. Raises `DataKeyMissing`."""
        # Once per transaction: the lock the read takes (the row's FOR SHARE, SQLite's
        # write transaction) holds until the transaction ends, so the version read stays
        # the active one for all of it, and a group commit's operations share one read
        # (on PostgreSQL one round trip each, in the committer's serial path: issue 21).
        # Not inside a savepoint: one rolled back releases the row locks taken in it.
        transaction = connection.get_transaction()
        reusable = transaction is not None and not connection.in_nested_transaction()
        held: tuple[object, dict[KeyPurpose, int]] | None = connection.info.get(_SEALED)
        if reusable and held is not None and held[0] is transaction and purpose in held[1]:
            return held[1][purpose]
        version = self._read_sealing_version(connection, purpose)
        if reusable:
            if held is None or held[0] is not transaction:
                held = (transaction, {})
                connection.info[_SEALED] = held
            held[1][purpose] = version
        return version

    def _read_sealing_version(self, connection: Connection, purpose: KeyPurpose) -> int:
        # On the driver's cursor (`vault.storage.rawsql`): the committer runs this for
        # every tokenize that stores a card, and SQLAlchemy's execute costs several times
        # the statement itself there (bench/levers.md).
        postgresql = connection.dialect.name == "postgresql"
        sql = _SEALING_SQL_POSTGRESQL if postgresql else _SEALING_SQL
        params = (purpose.value, KeyState.ACTIVE.value)
        rows = fetch_all(connection, sql, params)
        for _ in range(_SEALING_REREADS if postgresql else 0):
            if rows:
                break
            # A rotation that retired the active row while this statement waited on its
            # lock: PostgreSQL re-checked that row only (no longer active), and this
            # statement's snapshot predates the version the rotation inserted. A new
            # statement takes a new snapshot (READ COMMITTED) and sees it.
            rows = fetch_all(connection, sql, params)
        return self._remember_active(purpose, rows[0][0] if rows else None)

    def _remember_active(self, purpose: KeyPurpose, version: int | None) -> int:
        """Cache `version` as the active one of `purpose` and return it; raises
        `DataKeyMissing` when the read found none."""
        if version is None:
            raise DataKeyMissing(f"no active {purpose.value} data key: the vault is not set up")
        active = int(version)
        with self._lock:
            self._active[purpose] = active
            self._active_read[purpose] = time.monotonic()
        return active

    def gcm(self, version: int) -> AESGCM:
        """Return the AES-256-GCM cipher of PAN data key `version` (cached). Raises
        `IntegrityError` for a version the audit log records retired."""
        with self._lock:
            self._refuse_if_retired(KeyPurpose.PAN_GCM, version)
            cipher = self._gcm.get(version)
        if cipher is None:
            cipher = AESGCM(self._key(KeyPurpose.PAN_GCM, version))
            with self._lock:
                self._refuse_if_closed()
                self._gcm[version] = cipher
        return cipher

    def ff1(self, version: int) -> FF1:
        """Return the radix-10 FF1 cipher of FF1 data key `version` (cached). Raises
        `IntegrityError` for a version the audit log records retired."""
        with self._lock:
            self._refuse_if_retired(KeyPurpose.FF1, version)
            cipher = self._ff1.get(version)
        if cipher is None:
            cipher = FF1(self._key(KeyPurpose.FF1, version))
            with self._lock:
                self._refuse_if_closed()
                self._ff1[version] = cipher
        return cipher

    def _key(self, purpose: KeyPurpose, version: int) -> bytes:
        """Return the clear bytes of data key (`purpose`, `version`), unwrapping it in the
        HSM on first use. Raises `DataKeyMissing` (also once the keyring is closed),
        `IntegrityError` for a version the audit log records retired (its wrapped bytes
        put back: session 38), or `hsm.errors` when the HSM fails."""
        with self._lock:
            self._refuse_if_closed()
            clear = self._clear.get((purpose, version))
            if clear is not None:
                return bytes(clear)
        with self._engine.connect() as connection:
            row = connection.execute(
                select(
                    data_keys.c.wrapped, data_keys.c.wrap_mechanism, data_keys.c.kek_label
                ).where(data_keys.c.purpose == purpose.value, data_keys.c.version == version)
            ).first()
            retired = retired_through(connection, self.registry.signed_time)
        with self._lock:
            self._retired_through = max(self._retired_through, retired)
            self._refuse_if_retired(purpose, version)
        if row is None:
            raise DataKeyMissing(f"data key {purpose.value} v{version} does not exist")
        # Only under a KEK the registry records (review 38): the row's label is the
        # database's word, and a KEK of someone's making beside ours would otherwise open
        # a data key of their making, which every new card would then be sealed under.
        parsed = parse_key_label(str(row.kek_label))
        if (
            parsed is None
            or parsed[0] is not KeyKind.KEK
            or (parsed[1] not in self.registry.versions(KeyKind.KEK))
        ):
            raise DataKeyMissing(
                f"data key {purpose.value} v{version} is wrapped under {row.kek_label!r}, "
                "which is not a registered KEK on the token"
            )
        clear = self._provider.unwrap_key(
            WrappedKey(bytes(row.wrapped), str(row.wrap_mechanism), str(row.kek_label))
        )
        with self._lock:
            if self._closed:  # closed while this unwrap was under way
                wipe(clear)
                self._refuse_if_closed()
            existing = self._clear.setdefault((purpose, version), clear)
            if existing is not clear:
                wipe(clear)
            return bytes(existing)

    def inventory(self) -> list[DataKeyInfo]:
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(data_keys).order_by(data_keys.c.purpose, data_keys.c.version)
            ).all()
        return [
            DataKeyInfo(
                purpose=KeyPurpose(row.purpose),
                version=int(row.version),
                state=KeyState(row.state),
                kek_label=str(row.kek_label),
                wrap_mechanism=str(row.wrap_mechanism),
                created_at=row.created_at,
                retired_at=row.retired_at,
            )
            for row in rows
        ]

    def refresh(self) -> None:
        """Forget the cached active versions (after a rotation elsewhere)."""
        with self._lock:
            self._active.clear()

    def forget_retired(self, version: int) -> None:
        """Wipe and drop every cached form of retired data-key `version`, and the cached
        active versions: one may still name `version`, whose wrapped bytes are erased."""
        with self._lock:
            self._active.clear()
            for purpose in KeyPurpose:
                clear = self._clear.pop((purpose, version), None)
                if clear is not None:
                    wipe(clear)
            self._gcm.pop(version, None)
            self._ff1.pop(version, None)

    def forget_destroyed(self, destroyed: list[tuple[KeyPurpose, int]]) -> None:
        """Wipe and drop every cached form of the data keys `destroyed` (purpose,
        version): a rotation finished in another process erased them there, and this
        one must not keep them in clear until it restarts (review 38)."""
        with self._lock:
            for purpose, version in destroyed:
                clear = self._clear.pop((purpose, version), None)
                if clear is not None:
                    wipe(clear)
                if purpose is KeyPurpose.PAN_GCM:
                    self._gcm.pop(version, None)
                else:
                    self._ff1.pop(version, None)
                if self._active.get(purpose) == version:
                    del self._active[purpose]

    def close(self) -> None:
        """Wipe every unwrapped key for good (the stop): from now on `gcm`, `ff1` and
        every other use of a data key raise `DataKeyMissing`, and nothing is unwrapped
        again. The stop gives up on a worker that does not end in time (review 36); until
        session 36 its next batch unwrapped the keys again after the wipe (the provider
        reopens its sessions on the next call) and re-encrypted rows with them. Now it
        fails closed: its transaction is rolled back, nothing written."""
        with self._lock:
            self._closed = True
        self.wipe_all()

    def learn_retired(self, through: int) -> None:
        """Take `through` (`retired_through`, read by the rotation worker's pass) as the
        highest retired version, and wipe every cached form of the versions up to it:
        a rotation finished elsewhere retired them, whatever ``data_keys`` says now."""
        with self._lock:
            self._retired_through = max(self._retired_through, through)
            retired = [key for key in self._clear if key[1] <= self._retired_through]
        self.forget_destroyed(retired)

    def _refuse_if_retired(self, purpose: KeyPurpose, version: int) -> None:
        """Raise `IntegrityError` when `version` is one the audit log records retired (the
        caller holds the lock): its wrapped bytes, or a row naming it, were put back.

        One bound for every purpose: versions move in lockstep (a data rotation makes
        version N+1 of every purpose, `_new_data_keys`; a first start makes version 1 of
        each, `ensure_active`). A purpose added in a later release would have to start at
        the current version, not 1, or its first key would count as retired."""
        if version <= self._retired_through:
            raise IntegrityError(
                f"data key {purpose.value} v{version} was retired and destroyed (the audit "
                "log records it): a row under it was restored or altered"
            )

    def _refuse_if_closed(self) -> None:
        """Raise `DataKeyMissing` once `close` ran (the caller holds the lock)."""
        if self._closed:
            raise DataKeyMissing("the vault is stopping: its data keys are wiped")

    def wipe_all(self) -> None:
        """Overwrite and forget every unwrapped key (a key may be unwrapped again on its
        next use, unless `close` ran)."""
        with self._lock:
            for clear in self._clear.values():
                wipe(clear)
            self._clear.clear()
            self._active.clear()
            self._gcm.clear()
            self._ff1.clear()
