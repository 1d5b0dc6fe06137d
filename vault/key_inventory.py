"""The key inventory officers and evidence bundles see: token keys with their
attributes, data keys with their states, and how many records each key still protects.

IN PCI SCOPE (key management). Never key material: labels, attributes, versions, counts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import Connection, func, or_, select

from hsm.provider import HSMProvider
from vault.keyring import DataKeyring, KeyPurpose
from vault.storage.database import as_utc
from vault.storage.schema import security_code_epochs, tokens

# Security-code epoch keys listed: every live one, and those destroyed this recently.
EPOCHS_SHOWN: Final = timedelta(days=31)
# How old the record counts an officer's inventory read answers may be (atk49n): each
# count reads every token row, and an officer's reads are metered only by its bucket.
RECORD_COUNTS_SECONDS: Final = 10.0
# Records per PAN data key version, and per fingerprint key version (`record_counts`).
RecordCounts = tuple[dict[int, int], dict[int, int]]


class RecentCounts:
    """`record_counts`, counted at most `RECORD_COUNTS_SECONDS` ago, by one reader at a
    time (the others wait for its count). Counting reads every token row (the
    fingerprint versions through no index): an officer's inventory reads, 300 at once
    and 5 a second per worker, each counted the whole table twice (atk49n)."""

    def __init__(self, read: Callable[[], AbstractContextManager[Connection]]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._counted: tuple[float, RecordCounts] | None = None

    def recent(self) -> RecordCounts:
        with self._lock:
            if self._counted is not None:
                at, counts = self._counted
                if time.monotonic() - at < RECORD_COUNTS_SECONDS:
                    return counts
            with self._read() as connection:
                counts = record_counts(connection)
            self._counted = (time.monotonic(), counts)
            return counts


def record_counts(connection: Connection) -> RecordCounts:
    """Records per PAN data key version, and per fingerprint key version."""
    counts: dict[int, int] = dict(
        connection.execute(
            select(tokens.c.key_version, func.count())
            .where(tokens.c.key_version.is_not(None))
            .group_by(tokens.c.key_version)
        ).all()
    )
    fp_counts: dict[int, int] = dict(
        connection.execute(
            select(tokens.c.fp_version, func.count())
            .where(tokens.c.fingerprint.is_not(None))
            .group_by(tokens.c.fp_version)
        ).all()
    )
    return counts, fp_counts


def describe_keys(
    counts: dict[int, int],
    fp_counts: dict[int, int],
    keyring: DataKeyring,
    provider: HSMProvider,
) -> dict[str, Any]:
    """The inventory: ``{"token_keys": [...], "data_keys": [...]}``."""
    data = []
    for info in keyring.inventory():
        entry = {
            "purpose": info.purpose.value,
            "version": info.version,
            "state": info.state.value,
            "kek": info.kek_label,
            "wrap_mechanism": info.wrap_mechanism,
            "created_at": info.created_at.isoformat(),
            "retired_at": info.retired_at.isoformat() if info.retired_at else None,
            "records": counts.get(info.version, 0) if info.purpose is KeyPurpose.PAN_GCM else None,
        }
        data.append(entry)
    token_keys = []
    listed = provider.list_keys()  # once, for the answer and its `registered` (atk49n)
    stray = set(keyring.registry.unregistered(listed))
    for key in listed:
        if key.object_class == "PUBLIC_KEY":
            continue
        entry = {
            "label": key.label,
            "type": key.key_type,
            "sensitive": key.sensitive,
            "extractable": key.extractable,
            "never_extractable": key.never_extractable,
            "cka_id": key.key_id,
            # False for a key on the token that Cofre did not create (never used).
            "registered": key.label not in stray,
        }
        if key.label.startswith("cofre-fp-v"):
            entry["records"] = fp_counts.get(int(key.label.rsplit("v", 1)[1]), 0)
        token_keys.append(entry)
    return {"token_keys": token_keys, "data_keys": data}


def code_epochs(connection: Connection, now: datetime) -> list[dict[str, Any]]:
    """The hourly security-code keys (`vault.security_codes`): label, when made, when
    destroyed in the HSM (None while live). Live ones and those of the last 31 days."""
    rows = connection.execute(
        select(security_code_epochs)
        .where(
            or_(
                security_code_epochs.c.destroyed_at.is_(None),
                security_code_epochs.c.created_at >= now - EPOCHS_SHOWN,
            )
        )
        .order_by(security_code_epochs.c.epoch)
    ).all()
    return [
        {
            "label": str(row.label),
            "created_at": (as_utc(row.created_at) or row.created_at).isoformat(),
            "destroyed_at": None
            if row.destroyed_at is None
            else (as_utc(row.destroyed_at) or row.destroyed_at).isoformat(),
        }
        for row in rows
    ]
