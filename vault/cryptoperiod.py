"""Cryptoperiods: how long each kind of key may be used before it must be rotated
(PCI DSS 4.0.1 req. 3.6.1.1, 3.7.4; NIST SP 800-57 Part 1, section 5.3 and Table 1).

IN PCI SCOPE (key management). Never key material: labels, versions and dates.

The clock of a key starts when it was created: for a data key, its row's ``created_at``;
for a token key, its `key.register` audit entry (for a key adopted at a vault's first
start that is the adoption, later than the creation: the period then ends later than it
should, which docs/key-ceremony.md tells the officers). Only the key in use counts: the
newest registered version of each token kind and the active version of each data key
purpose. Older versions are already being migrated away by a rotation.

Each current key is ``ok``, ``expiring`` (within the warning window of its end) or
``overdue`` (past it). The states feed a metric, the readiness report (code
``key_cryptoperiod_overdue``) and the key inventory that evidence bundles carry.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

import structlog
from sqlalchemy import Engine, select, text

from audit.retention import REGISTERED_AT, registration_details
from audit.schema import READ_ONLY, audit_entries
from cofre.dberrors import database_errors_as
from cofre.settings import KeySettings
from hsm.keys import KeyKind, key_label
from vault.errors import KeyCryptoperiodOverdue, StorageUnavailable
from vault.key_registry import REGISTER_RECORDS, KeyRegistry
from vault.keyring import DataKeyring, KeyState
from vault.storage.database import as_utc

_log = structlog.get_logger("cofre.vault")
_CACHE_SECONDS: Final = 60.0
# Through migration 0014's partial index (`vault.key_registry.REGISTER_RECORDS`).
_REGISTERED: Final = (
    select(audit_entries.c.payload, audit_entries.c.created_at)
    .where(text(REGISTER_RECORDS))
    .order_by(audit_entries.c.id)
)


class PeriodState(StrEnum):
    OK = "ok"
    EXPIRING = "expiring"
    OVERDUE = "overdue"


@dataclass(frozen=True, slots=True)
class Cryptoperiods:
    """The cryptoperiod of each key kind, in days, and the warning window before its end.
    Defaults and their reasons: docs/key-ceremony.md ("Cryptoperiods")."""

    kek_days: float = 365.0
    data_days: float = 365.0
    fingerprint_days: float = 730.0
    audit_days: float = 730.0
    warn_days: float = 30.0

    def for_kind(self, kind: str) -> timedelta:
        days = {
            KeyKind.KEK.value: self.kek_days,
            KeyKind.FINGERPRINT.value: self.fingerprint_days,
            KeyKind.AUDIT.value: self.audit_days,
        }.get(kind, self.data_days)
        return timedelta(days=days)


@dataclass(frozen=True, slots=True)
class KeyPeriod:
    """One key in use and where it stands in its cryptoperiod."""

    key: str  # a token label (cofre-kek-v2) or a data key (pan_gcm-v3)
    kind: str  # kek, fp, audit or data
    started_at: datetime
    ends_at: datetime
    state: PeriodState

    def days_left(self, now: datetime) -> float:
        return (self.ends_at - now).total_seconds() / 86400

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "started_at": self.started_at.isoformat(),
            "ends_at": self.ends_at.isoformat(),
            "state": self.state.value,
        }


def judge(
    key: str,
    kind: str,
    started_at: datetime,
    periods: Cryptoperiods,
    now: datetime,
) -> KeyPeriod:
    """Place one key in its cryptoperiod at `now`."""
    ends = started_at + periods.for_kind(kind)
    if now >= ends:
        state = PeriodState.OVERDUE
    elif now >= ends - timedelta(days=periods.warn_days):
        state = PeriodState.EXPIRING
    else:
        state = PeriodState.OK
    return KeyPeriod(key, kind, started_at, ends, state)


class CryptoperiodMonitor:
    """Assess the keys in use against their cryptoperiods (cached for a minute: readiness
    probes and metric collections call it every few seconds) and log each change of state
    once, as a warning."""

    def __init__(
        self,
        engine: Engine,
        keyring: DataKeyring,
        periods: Cryptoperiods,
        *,
        fail_readiness: bool = False,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._reader = engine.execution_options(**READ_ONLY)
        self._keyring = keyring
        self._registry: KeyRegistry = keyring.registry
        self.periods = periods
        self.fail_readiness = fail_readiness
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: list[KeyPeriod] | None = None
        self._cached_at = 0.0
        self._states: dict[str, PeriodState] = {}

    def _registered_at(self) -> dict[str, datetime]:
        """When each token label was (last) registered, from the audit log: a copy
        retention carried forward says when its original was (rev49: dated by its own
        record, the copy restarted the key's cryptoperiod at each retention run), never
        later than the copy itself."""
        out: dict[str, datetime] = {}
        with self._reader.connect() as connection:
            for payload, created_at in connection.execute(_REGISTERED).all():
                parsed = registration_details(payload)
                if parsed is None:  # not the vault's (session 39, review 49c)
                    continue
                label = str(parsed[1].get("label", ""))
                at = as_utc(created_at) or created_at
                original = _time(parsed[1].get(REGISTERED_AT))
                out[label] = at if original is None else min(at, original)
        return out

    # A database outage leaves as `StorageUnavailable` (503), never as a driver error.
    @database_errors_as(StorageUnavailable, "the key store")
    def assess(self, *, fresh: bool = False) -> list[KeyPeriod]:
        """The keys in use with their cryptoperiod state. Raises what the database or the
        HSM raise (`StorageUnavailable`, `HSMUnavailable`)."""
        with self._lock:
            recent = time.monotonic() - self._cached_at < _CACHE_SECONDS
            if not fresh and self._cached is not None and recent:
                return list(self._cached)
        now = self._clock()
        found: list[KeyPeriod] = []
        registered = self._registered_at()
        # One listing of the token for every kind (atk49n: one per kind, and an
        # officer's inventory read asks fresh).
        listed = self._registry.listing()
        for kind in KeyKind:
            versions = self._registry.versions(kind, listed)
            if not versions:
                continue
            label = key_label(kind, versions[-1])
            if label in registered:
                found.append(judge(label, kind.value, registered[label], self.periods, now))
        for info in self._keyring.inventory():
            if info.state is KeyState.ACTIVE:
                started = as_utc(info.created_at) or info.created_at
                name = f"{info.purpose.value}-v{info.version}"
                found.append(judge(name, "data", started, self.periods, now))
        self._note_changes(found)
        with self._lock:
            self._cached, self._cached_at = found, time.monotonic()
        return list(found)

    def _note_changes(self, found: list[KeyPeriod]) -> None:
        for period in found:
            if self._states.get(period.key) == period.state:
                continue
            self._states[period.key] = period.state
            if period.state is not PeriodState.OK:
                _log.warning(
                    f"key cryptoperiod {period.state.value}: rotate it (cofre keys rotate)",
                    key=period.key,
                    kind=period.kind,
                    ends_at=period.ends_at.isoformat(),
                )

    def counts(self) -> dict[PeriodState, int]:
        """How many keys in use are in each state (for the metric)."""
        out = dict.fromkeys(PeriodState, 0)
        for period in self.assess():
            out[period.state] += 1
        return out

    def check(self) -> str:
        """The readiness view: ``"ok"``, or a line naming the expiring and overdue keys.
        Raises `KeyCryptoperiodOverdue` for an overdue key only when configured to fail
        readiness (``COFRE_KEYS__OVERDUE_FAILS_READINESS``)."""
        periods = self.assess()
        overdue = [p.key for p in periods if p.state is PeriodState.OVERDUE]
        expiring = [p.key for p in periods if p.state is PeriodState.EXPIRING]
        if overdue and self.fail_readiness:
            raise KeyCryptoperiodOverdue(
                "keys past their cryptoperiod (rotate them: cofre keys rotate): "
                + ", ".join(overdue)
            )
        parts = []
        if overdue:
            parts.append(f"{KeyCryptoperiodOverdue.code}: {', '.join(overdue)}")
        if expiring:
            parts.append(f"key_cryptoperiod_expiring: {', '.join(expiring)}")
        return "; ".join(parts) or "ok"


def monitor_from_settings(
    keys: KeySettings, engine: Engine, keyring: DataKeyring
) -> CryptoperiodMonitor:
    """The keys in use judged against the configured cryptoperiods (``COFRE_KEYS__*``)."""
    return CryptoperiodMonitor(
        engine,
        keyring,
        Cryptoperiods(
            kek_days=keys.cryptoperiod_kek_days,
            data_days=keys.cryptoperiod_data_days,
            fingerprint_days=keys.cryptoperiod_fingerprint_days,
            audit_days=keys.cryptoperiod_audit_days,
            warn_days=keys.cryptoperiod_warn_days,
        ),
        fail_readiness=keys.overdue_fails_readiness,
    )


def _time(text: object) -> datetime | None:
    """An audit entry's time (``2026-03-01T05:00:00.000000Z``) as an aware datetime;
    None when it is not one."""
    if not isinstance(text, str):
        return None
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo is not None else None
