"""The witness's state: the last checkpoint it cosigned for each log, the key handovers
it followed, and the next log keys its operator pinned (`cofre witness trust-key`), in
its own SQLite file (no other database, nothing of the vault's).

The check of the old size and the write of the new checkpoint happen in one
``BEGIN IMMEDIATE`` transaction, as tlog-witness requires: two submissions racing cannot
roll the stored size back. The same transaction re-reads the handovers the checkpoint's
signature and handover line were checked against: two submissions (or two witness
processes on one file) cannot both be stored against a key one of them just retired.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from witness.errors import HandoverRaced, WitnessStateFailed

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    origin TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    note TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS handovers (
    origin TEXT NOT NULL,
    size INTEGER NOT NULL,
    note TEXT NOT NULL,
    PRIMARY KEY (origin, size)
);
CREATE TABLE IF NOT EXISTS pinned_keys (
    origin TEXT NOT NULL,
    vkey TEXT NOT NULL,
    PRIMARY KEY (origin, vkey)
);
"""


@dataclass(frozen=True, slots=True)
class Cosigned:
    """The last checkpoint cosigned for a log: its size, root, and the note as served
    (the log's signature and this witness's cosignature)."""

    size: int
    root: bytes
    note: str


class WitnessState:
    """One SQLite file; one connection guarded by a lock (the witness is small)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise WitnessStateFailed(f"cannot open the witness state {path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def latest(self, origin: str) -> Cosigned | None:
        """Return the last checkpoint cosigned for `origin`, or None."""
        with self._lock, self._errors():
            row = self._db.execute(
                "SELECT size, root, note FROM checkpoints WHERE origin = ?", (origin,)
            ).fetchone()
        return None if row is None else Cosigned(int(row[0]), bytes(row[1]), str(row[2]))

    def handovers(self, origin: str) -> list[str]:
        """Return the audit key handover notes this witness accepted for `origin`, in
        order of size (`Witness` follows them to the log's current key)."""
        with self._lock, self._errors():
            return self._handovers(origin)

    def _handovers(self, origin: str) -> list[str]:
        rows = self._db.execute(
            "SELECT note FROM handovers WHERE origin = ? ORDER BY size", (origin,)
        ).fetchall()
        return [str(row[0]) for row in rows]

    def pin_key(self, origin: str, vkey: str) -> bool:
        """Record that the witness's operator pinned `vkey` as a key `origin` may hand
        its audit key over to. Returns False when it was pinned already."""
        with self._lock, self._errors():
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO pinned_keys (origin, vkey) VALUES (?, ?)", (origin, vkey)
            )
        return cursor.rowcount == 1

    def pinned_keys(self, origin: str) -> list[str]:
        """Return the vkeys the operator pinned for `origin`'s key handovers."""
        with self._lock, self._errors():
            rows = self._db.execute(
                "SELECT vkey FROM pinned_keys WHERE origin = ? ORDER BY vkey", (origin,)
            ).fetchall()
        return [str(row[0]) for row in rows]

    def update(
        self,
        origin: str,
        decide: Callable[[Cosigned | None], Cosigned],
        *,
        handovers_seen: Sequence[str],
        handover: str | None = None,
    ) -> Cosigned:
        """Atomically read the state of `origin`, call `decide` with it (which raises to
        refuse), and store what it returns (with the key `handover` note it accepted, if
        any, in the same transaction). Returns the stored value.

        `handovers_seen` are the handover notes (`handovers`) the caller checked the
        checkpoint against, read before this transaction: the key that signs now and
        the handovers followed come from them. Raises `HandoverRaced`, storing nothing,
        when the handovers stored now differ (another submission or process took a
        handover meanwhile)."""
        with self._lock, self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # BEGIN IMMEDIATE holds the write lock from here: no handover can be
                # stored between this read and the write below.
                self._refuse_if_changed(origin, handovers_seen)
                row = self._db.execute(
                    "SELECT size, root, note FROM checkpoints WHERE origin = ?", (origin,)
                ).fetchone()
                current = None if row is None else Cosigned(int(row[0]), bytes(row[1]), row[2])
                new = decide(current)
                self._db.execute(
                    "INSERT INTO checkpoints (origin, size, root, note) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(origin) DO UPDATE SET size = excluded.size, "
                    "root = excluded.root, note = excluded.note",
                    (origin, new.size, new.root, new.note),
                )
                if handover is not None:
                    self._db.execute(
                        "INSERT OR REPLACE INTO handovers (origin, size, note) VALUES (?, ?, ?)",
                        (origin, new.size, handover),
                    )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return new

    def _refuse_if_changed(self, origin: str, seen: Sequence[str]) -> None:
        """Raise `HandoverRaced` when `origin`'s stored handovers are not `seen`."""
        if self._handovers(origin) != list(seen):
            raise HandoverRaced(
                f"{origin}: the log's key changed (a key handover was taken) while this "
                "checkpoint was checked; submit it again"
            )

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise WitnessStateFailed(f"the witness state failed: {exc}") from None
