"""Token rows a rotation cannot read (rot38): skipped, audited once, named, and the
rotation kept from completing while one remains.

IN PCI SCOPE, reads card data (a retry opens the row's PAN). A part of
`vault.rotation.KeyRotation`, through `vault._rotation_batches.RotationBatches`.

A row whose ciphertext, nonce or associated data fails AES-GCM authentication (a byte a
writer of the database flipped, a row moved to another domain, corruption), or that
names a data-key version the audit log records retired, cannot be resealed under the
new data key nor fingerprinted under the new fingerprint key. `open_pan`'s `InvalidTag`
(or the keyring's `IntegrityError`) escaped the batch: every pass rolled back at that
row, the rows after it never moved, and the rotation never ended (PCI DSS 3.6.1/3.7.4).

Now a batch skips such a row (held in memory as a suspect) and moves the rest. When
nothing else is left under the old version, the suspects are opened once more (a row
restored from a backup moves then); each one still unreadable is audited once,
``key.rotation.row_unreadable`` naming the ceremony (``key_id``) and the token id, with
``integrity_error``, and the rotation does not complete: the old key stays, so a card is
never lost to a detection, right or wrong. The status names the tokens
(`unreadable_tokens`); docs/key-ceremony.md ("A row the rotation cannot read") has the
runbook: restore the row from a backup, or delete the token under dual control.
Nothing is ever resealed or fingerprinted from a row that did not authenticate.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from sqlalchemy import Connection, Row, Select, select, text

from audit.log import AuditEvent, AuditLog, Outcome
from audit.retention import record_object
from audit.schema import audit_entries
from vault.ceremony import RotationKind
from vault.errors import IntegrityError
from vault.storage.database import as_utc
from vault.storage.schema import tokens

_log = logging.getLogger(__name__)

ROW_UNREADABLE: Final = "key.rotation.row_unreadable"
UNREADABLE_ACTION: Final = (
    "restore each row from a backup, or delete the token under dual control "
    "(docs/key-ceremony.md, 'A row the rotation cannot read'); the rotation completes "
    "once none remains under the old key"
)
# Every entry of that action starts so (canonical JSON: sorted keys, "action" first);
# written out, not a bound parameter, so that the read goes through migration 0024's
# partial index (``ix_audit_entries_rotation_row_unreadable``), whose predicate this is
# word for word: both databases use a partial index only for a query carrying it.
UNREADABLE_RECORDS: Final = """payload LIKE '{"action":"key.rotation.row_unreadable",%'"""
# Ids per ``IN (...)`` (review rev39): one bound parameter each, and a driver refuses a
# statement past its limit (psycopg 65,535; SQLite 250,000 here). A writer of the
# database who logged that many records naming a running ceremony (the app role may
# insert into the log, which keeps them for good) failed every pass and the status.
_IDS_PER_READ: Final = 1000


def refusal(token_id: str) -> IntegrityError:
    """The stable error a row that fails authentication in a rotation is (no card in it)."""
    return IntegrityError(
        f"token row {token_id} fails authentication under its data key: not rotated",
        token_id=token_id,
    )


def recorded(connection: Connection, ceremony: Row[Any]) -> set[str]:
    """The token ids the audit log records unreadable in rotation `ceremony`: a read of
    the entries since it was proposed (once per worker process and ceremony, and at
    each status of a running data or fingerprint rotation)."""
    query = select(audit_entries.c.payload).where(text(UNREADABLE_RECORDS))
    since = as_utc(ceremony.created_at)
    if since is not None:
        query = query.where(audit_entries.c.created_at >= since)
    found = set()
    for payload in connection.execute(query).scalars():
        entry = record_object(payload)  # None: not the vault's (review rev39)
        if entry is None:
            continue
        if entry.get("key_id") == ceremony.id and entry.get("token_id"):
            found.add(str(entry["token_id"]))
    return found


def rows_among(connection: Connection, query: Select[Any], ids: set[str]) -> list[Any]:
    """The rows of `query` (on ``tokens``) whose id is one of `ids`, read `_IDS_PER_READ`
    ids at a time, however many there are."""
    ordered = sorted(ids)
    found: list[Any] = []
    for start in range(0, len(ordered), _IDS_PER_READ):
        chunk = ordered[start : start + _IDS_PER_READ]
        found += connection.execute(query.where(tokens.c.id.in_(chunk))).all()
    return found


def _still_under_old(connection: Connection, ceremony: Row[Any], ids: set[str]) -> list[str]:
    if not ids or ceremony.old_version is None:
        return []
    old = int(ceremony.old_version)
    if ceremony.kind == RotationKind.DATA.value:
        where = tokens.c.key_version == old
    else:
        where = (tokens.c.fp_version == old) & tokens.c.fingerprint.is_not(None)
    return sorted(str(r.id) for r in rows_among(connection, select(tokens.c.id).where(where), ids))


def unreadable_tokens(connection: Connection, ceremony: Row[Any]) -> list[str]:
    """The tokens a running data or fingerprint rotation `ceremony` found unreadable and
    that still hold it back (restored or deleted ones drop out)."""
    kinds = (RotationKind.DATA.value, RotationKind.FINGERPRINT.value)
    if ceremony.kind not in kinds or ceremony.state != "running":
        return []
    return _still_under_old(connection, ceremony, recorded(connection, ceremony))


class UnreadableRows:
    """The rotation's memory of the rows it could not read, per ceremony."""

    _audit: AuditLog

    def _suspects(self, ceremony_id: str) -> set[str]:
        held: dict[str, set[str]] = vars(self).setdefault("_rot_suspects", {})
        return held.setdefault(ceremony_id, set())

    def _audited(self, connection: Connection, ceremony: Row[Any]) -> set[str]:
        held: dict[str, set[str]] = vars(self).setdefault("_rot_audited", {})
        if ceremony.id not in held:  # another process's, or before a restart
            held[ceremony.id] = recorded(connection, ceremony)
        return held[ceremony.id]

    def _skipped(self, connection: Connection, ceremony: Row[Any]) -> set[str]:
        """The ids a batch of `ceremony` does not select again."""
        return self._suspects(ceremony.id) | self._audited(connection, ceremony)

    def _unskipped(
        self, connection: Connection, ceremony: Row[Any], query: Select[Any], batch: int
    ) -> list[Any]:
        """Up to `batch` rows of `query` (what `ceremony` has left under its old version)
        that it does not skip, or none when none is left. A few skipped ids (the usual
        case) are left out by the statement, which the index on the version serves as
        before. More (review rev39: an ``id NOT IN`` of every one grew past the
        driver's limit on a flood of forged records or of unreadable rows, and each
        pass of the rotation failed) are left out here, the rows read in the order of
        their ids from where this process's last read for the ceremony ended, round to
        the start once."""
        skipped = self._skipped(connection, ceremony)
        if len(skipped) <= _IDS_PER_READ:
            return list(
                connection.execute(query.where(tokens.c.id.not_in(sorted(skipped))).limit(batch))
            )
        after_by: dict[str, str] = vars(self).setdefault("_rot_after", {})
        after = after_by.get(ceremony.id, "")
        went_round = not after
        while True:
            rows = connection.execute(
                query.where(tokens.c.id > after).order_by(tokens.c.id).limit(batch)
            ).all()
            if not rows:
                if went_round:
                    after_by.pop(ceremony.id, None)
                    return []
                after, went_round = "", True
                continue
            after = after_by[ceremony.id] = str(rows[-1].id)
            if found := [r for r in rows if str(r.id) not in skipped]:
                return found

    def _held_back(self) -> dict[str, list[str]]:
        held: dict[str, list[str]] = vars(self).setdefault("_rot_held", {})
        return held

    def held_back(self) -> IntegrityError | None:
        """What keeps a running rotation from completing, as this process's worker last
        found it: an `IntegrityError` naming the ceremonies and their unreadable tokens
        (the rotation worker reports it as failing: readiness's ``key_rotation`` check,
        the ``background loop failing`` log line), or None."""
        held = {ceremony: ids for ceremony, ids in self._held_back().items() if ids}
        if not held:
            return None
        named = "; ".join(f"key ceremony {c}: tokens {', '.join(ids)}" for c, ids in held.items())
        return IntegrityError(
            f"a rotation cannot complete, rows fail authentication ({named}): {UNREADABLE_ACTION}"
        )

    def _open_or_skip(self, ceremony: Row[Any], item: Row[Any], opener: Any) -> bytes | None:
        """`opener()`'s PAN, or None for a row that fails authentication: then held as a
        suspect, skipped by this batch and the next ones, retried at the end."""
        try:
            clear: bytes = opener()
        except (InvalidTag, IntegrityError):
            self._suspects(ceremony.id).add(str(item.id))
            return None
        return clear

    def _report(self, connection: Connection, ceremony: Row[Any], still: list[str]) -> None:
        """Audit, once each, the rows of `ceremony` still unreadable at its end."""
        audited = self._audited(connection, ceremony)
        new = [token_id for token_id in still if token_id not in audited]
        for token_id in new:
            error = refusal(token_id)
            self._audit.append(
                connection,
                AuditEvent(
                    action=ROW_UNREADABLE,
                    outcome=Outcome.FAILED,
                    actor="cofre rotation",
                    token_id=token_id,
                    key_id=ceremony.id,
                    details={"kind": str(ceremony.kind), "error": error.code},
                ),
            )
        if new:
            _log.error(
                "key ceremony %s cannot complete: token rows %s fail authentication under "
                "their data key (integrity_error); %s",
                ceremony.id,
                ", ".join(new),
                UNREADABLE_ACTION,
            )
        audited.update(new)
        if still:
            self._held_back()[ceremony.id] = still
        else:
            self._held_back().pop(ceremony.id, None)
