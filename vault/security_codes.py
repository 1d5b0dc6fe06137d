"""Card security codes, held once (PCI DSS 3.3.1, 3.3.2).

IN PCI SCOPE, holds sensitive authentication data, encrypted only and never for long:

- **Encrypted under its own short-lived key epoch.** Each hour has its own AES-256 key
  in the HSM (``cofre-csc-e<hour since the Unix epoch>``), sensitive and never
  extractable, registered in the key registry when it is made. A code is sealed in the
  HSM under the current hour's key with AES-GCM; the AAD binds it to its token (token
  id, token, epoch), so a ciphertext moved to another row does not open.
- **TTL of at most an hour.** A code expires `ttl` after it was held (never later than
  `ttl` after its epoch ends). The sweeper (`HeldCodes.sweep`) deletes expired codes
  and destroys every epoch key whose codes have all expired: (epoch + 1) hours + `ttl`.
  A destroyed key cannot be recovered from any backup of the database or of the HSM's
  cluster after the fact; a code whose key is gone is as good as expired.
- **Consumed by the first relay call that uses it** (`HeldCodes.take`, in the relay's
  audit transaction), and deleted in that transaction: a second call finds nothing.
- **Never returned** by any detokenize: nothing here is reachable from the reveal path.
- **Counted, never shown**: held / used / expired per hour in
  ``security_code_counts`` (metrics and evidence bundles read `HeldCodes.counts`).

One code per token: a new code for a token replaces the one it held (the older one is
counted as expired, unused).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError as SQLIntegrityError

from audit.log import AuditEvent, AuditLog, Outcome
from audit.schema import READ_ONLY
from hsm.errors import HSMKeyNotFound, HSMOperationFailed
from hsm.keys import code_epoch_label
from hsm.provider import HSMProvider
from vault.card import SecurityCode
from vault.errors import IntegrityError, SecurityCodeUnavailable
from vault.key_registry import KeyRegistry, token_identities
from vault.storage.database import as_utc
from vault.storage.schema import security_code_counts, security_code_epochs, security_codes

EPOCH_SECONDS: Final = 3600
MAX_TTL: Final = timedelta(hours=1)
HELD: Final = "held"
USED: Final = "used"
EXPIRED: Final = "expired"
EVENTS: Final = (HELD, USED, EXPIRED)


def epoch_of(at: datetime) -> int:
    """The key epoch of instant `at`: whole hours since the Unix epoch."""
    return int(at.timestamp()) // EPOCH_SECONDS


def code_aad(token_id: str, token: str, epoch: int) -> bytes:
    """The AES-GCM associated data of a held code: its token row and its epoch."""
    return f"cofre:csc:v1|{token_id}|{token}|{epoch}".encode()


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one sweep did: codes expired, epoch keys destroyed (labels)."""

    expired: int
    destroyed: tuple[str, ...]


class HeldCodes:
    """The security codes of one vault database, sealed under hourly HSM key epochs."""

    def __init__(
        self,
        engine: Engine,
        provider: HSMProvider,
        registry: KeyRegistry,
        audit: AuditLog,
        *,
        ttl: timedelta = MAX_TTL,
    ) -> None:
        if not timedelta(seconds=1) <= ttl <= MAX_TTL:
            raise ValueError("a security code's time to live is 1 second to 1 hour")
        self.ttl = ttl
        self._engine = engine
        self._provider = provider
        self._registry = registry
        self._audit = audit
        self._lock = threading.Lock()
        self._ready: set[int] = set()  # epochs whose key this process saw made

    # ------------------------------------------------------------------ epochs
    def ensure_epoch(self, now: datetime, *, actor: str) -> int:
        """Return the epoch of `now`, making and registering its HSM key first if no
        node did (in a transaction of its own, before the caller's).

        Raises `SecurityCodeUnavailable` when the key cannot be made, `HSMUnavailable`,
        `StorageUnavailable` (translated by the caller)."""
        epoch = epoch_of(now)
        with self._lock:
            if epoch in self._ready:
                return epoch
        label = code_epoch_label(epoch)
        for _attempt in range(3):
            try:
                with self._engine.begin() as connection:
                    row = connection.execute(
                        select(security_code_epochs.c.destroyed_at).where(
                            security_code_epochs.c.epoch == epoch
                        )
                    ).first()
                    if row is None:
                        self._make_epoch(connection, epoch, label, now, actor=actor)
                    elif row.destroyed_at is not None:  # a clock far behind the others
                        raise SecurityCodeUnavailable("this hour's code key was destroyed")
            except SQLIntegrityError:
                continue  # another node made it meanwhile: read again
            self._check_registered(label)
            with self._lock:
                self._ready.add(epoch)
            return epoch
        raise SecurityCodeUnavailable("the security-code key of this hour could not be made")

    def _check_registered(self, label: str) -> None:
        # Never seal under a key that is not the one recorded when it was made (a
        # substitute planted under the label): PCI DSS 3.7.7, as for every Cofre key.
        identity = token_identities(self._provider.list_keys()).get(label)
        if identity is None or self._registry.registered(fresh=True).get(label) != identity:
            raise SecurityCodeUnavailable(
                "this hour's security-code key on the HSM is not the registered one"
            )

    def _make_epoch(
        self, connection: Connection, epoch: int, label: str, now: datetime, *, actor: str
    ) -> None:
        # The row first: its primary key makes every other node wait, then fail and
        # read again, so one key is made per hour.
        connection.execute(
            insert(security_code_epochs).values(epoch=epoch, label=label, created_at=now)
        )
        if self._provider.has_key(label):
            # Left by a transaction that failed after making it: it sealed nothing.
            self._provider.destroy_key(label)
        self._provider.generate_aead_key(label)
        self._registry.register(connection, label, actor=actor, how="security-code epoch")
        self._audit.append(
            connection,
            AuditEvent(
                action="key.create",
                outcome=Outcome.SUCCESS,
                actor=actor,
                key_id=label,
                details={"purpose": "security codes", "ttl_seconds": int(self.ttl.total_seconds())},
            ),
        )

    def _epoch_end(self, epoch: int) -> datetime:
        return datetime.fromtimestamp((epoch + 1) * EPOCH_SECONDS, UTC)

    # ------------------------------------------------------------------ codes
    def hold(
        self,
        connection: Connection,
        *,
        token_id: str,
        token: str,
        code: SecurityCode,
        epoch: int,
        now: datetime,
    ) -> None:
        """Seal `code` for the token in `connection`'s transaction, replacing any code
        the token held. Raises `HSMUnavailable`, `HSMKeyNotFound`."""
        iv, sealed = self._provider.aead_encrypt(
            code_epoch_label(epoch), code.reveal().encode("ascii"), code_aad(token_id, token, epoch)
        )
        replaced = connection.execute(
            delete(security_codes).where(security_codes.c.token_id == token_id)
        ).rowcount
        connection.execute(
            insert(security_codes).values(
                token_id=token_id,
                epoch=epoch,
                iv=iv,
                ciphertext=sealed,
                held_at=now,
                expires_at=min(now + self.ttl, self._epoch_end(epoch) + self.ttl),
            )
        )
        self.count(connection, now, HELD)
        if replaced:
            self.count(connection, now, EXPIRED, replaced)

    def holds(self, connection: Connection, token_id: str, now: datetime) -> bool:
        """Whether the token holds a code that has not expired."""
        row = connection.execute(
            select(security_codes.c.expires_at).where(security_codes.c.token_id == token_id)
        ).first()
        expires = None if row is None else as_utc(row.expires_at) or row.expires_at
        return expires is not None and expires > now

    def take(
        self, connection: Connection, *, token_id: str, token: str, now: datetime
    ) -> SecurityCode | None:
        """Return the code the token holds and delete it, in `connection`'s transaction
        (it commits with the caller's audit entry, or not at all). None when the token
        holds none, or its code expired or its epoch key is gone.

        Raises `IntegrityError` when the sealed code fails authentication,
        `HSMUnavailable`."""
        row = connection.execute(
            select(security_codes).where(security_codes.c.token_id == token_id)
        ).first()
        if row is None:
            return None
        connection.execute(delete(security_codes).where(security_codes.c.token_id == token_id))
        expires = as_utc(row.expires_at) or row.expires_at
        if expires <= now:
            self.count(connection, now, EXPIRED)
            return None
        epoch = int(row.epoch)
        try:
            clear = self._provider.aead_decrypt(
                code_epoch_label(epoch),
                bytes(row.iv),
                bytes(row.ciphertext),
                code_aad(token_id, token, epoch),
            )
        except HSMKeyNotFound:
            self.count(connection, now, EXPIRED)
            return None
        except HSMOperationFailed:
            raise IntegrityError(
                "a held security code failed authentication (altered or moved)"
            ) from None
        self.count(connection, now, USED)
        return SecurityCode(clear.decode("ascii"))

    def discard(self, connection: Connection, token_id: str, now: datetime) -> None:
        """Delete the token's code, unused (the token was deleted)."""
        gone = connection.execute(
            delete(security_codes).where(security_codes.c.token_id == token_id)
        ).rowcount
        if gone:
            self.count(connection, now, EXPIRED, gone)

    # ------------------------------------------------------------------ sweeping
    def sweep(self, now: datetime, *, actor: str = "cofre") -> SweepResult:
        """Delete expired codes, then destroy in the HSM every epoch key whose codes
        have all expired; each step audited in its own transaction."""
        with self._engine.begin() as connection:
            expired = connection.execute(
                delete(security_codes).where(security_codes.c.expires_at <= now)
            ).rowcount
            if expired:
                self.count(connection, now, EXPIRED, expired)
                self._audit.append(
                    connection,
                    AuditEvent(
                        action="security_code.expire",
                        outcome=Outcome.SUCCESS,
                        actor=actor,
                        details={"count": expired},
                    ),
                )
        destroyed = []
        last_spent = epoch_of(now - self.ttl) - 1  # its end + ttl is in the past
        with self._engine.connect() as connection:
            spent = connection.execute(
                select(security_code_epochs.c.epoch, security_code_epochs.c.label).where(
                    security_code_epochs.c.destroyed_at.is_(None),
                    security_code_epochs.c.epoch <= last_spent,
                )
            ).all()
        for epoch, label in spent:
            self._destroy_epoch(int(epoch), str(label), now, actor=actor)
            destroyed.append(str(label))
        return SweepResult(expired=expired, destroyed=tuple(destroyed))

    def _destroy_epoch(self, epoch: int, label: str, now: datetime, *, actor: str) -> None:
        with self._engine.begin() as connection:
            left = connection.execute(
                delete(security_codes).where(security_codes.c.epoch == epoch)
            ).rowcount
            if left:
                self.count(connection, now, EXPIRED, left)
            connection.execute(
                update(security_code_epochs)
                .where(security_code_epochs.c.epoch == epoch)
                .values(destroyed_at=now)
            )
            self._audit.append(
                connection,
                AuditEvent(
                    action="key.destroy",
                    outcome=Outcome.SUCCESS,
                    actor=actor,
                    key_id=label,
                    details={"purpose": "security codes", "reason": "every code expired"},
                ),
            )
            # Last, inside the transaction: if the commit fails the next sweep finds the
            # key gone and records it then.
            with contextlib.suppress(HSMKeyNotFound):
                self._provider.destroy_key(label)
        with self._lock:
            self._ready.discard(epoch)

    # ------------------------------------------------------------------ counts
    def count(self, connection: Connection, now: datetime, event: str, n: int = 1) -> None:
        """Add `n` to the hour's count of `event` (held, used, expired)."""
        hour = epoch_of(now)
        values = {"hour": hour, "event": event, "count": n}
        dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(security_code_counts).values(values)
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=["hour", "event"],
                set_={"count": security_code_counts.c.count + statement.excluded.count},
            )
        )

    def counts(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> dict[str, int]:
        """Codes held, used and expired in the hours of [`since`, `until`) (all time by
        default), and ``held_now``: codes held at this moment. Counts only, never codes."""
        query = select(security_code_counts.c.event, func.sum(security_code_counts.c.count))
        if since is not None:
            query = query.where(security_code_counts.c.hour >= epoch_of(since))
        if until is not None:
            query = query.where(
                security_code_counts.c.hour < -(-until.timestamp() // EPOCH_SECONDS)
            )
        with self._engine.execution_options(**READ_ONLY).connect() as connection:
            found = dict(connection.execute(query.group_by(security_code_counts.c.event)).all())
            held_now = connection.execute(
                select(func.count()).select_from(security_codes)
            ).scalar_one()
        out = {event: int(found.get(event) or 0) for event in EVENTS}
        out["held_now"] = int(held_now)
        return out
