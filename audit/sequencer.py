"""The sequencer: integrates queued entries into the Merkle tree, in order, and signs
tree heads when enough entries or time have passed.

IN PCI SCOPE. This is the pattern Trillian uses: operations only *queue* entries (inside
their own transactions, so they never contend for the tree); one sequencer at a time
assigns leaf indices, stores every newly completed subtree hash, and signs heads. When
several vault nodes share one PostgreSQL, a transaction-scoped advisory lock elects the
one that integrates; the others find the lock taken and return at once. SQLite
serialises writers already (``BEGIN IMMEDIATE``).

On PostgreSQL the sequencer also has the monthly partitions of ``audit_entries`` made
ahead (`audit.partitions`), about once an hour, in a transaction of its own: a failure
there is remembered in `partition_error` and never stops sequencing (the default
partition takes any row meanwhile).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Final

import structlog
from sqlalchemy import Connection, Engine, and_, func, insert, or_, select, text
from sqlalchemy.exc import SQLAlchemyError

from audit._rows import delete_queued, insert_values, queued_entries
from audit.errors import AuditWriteFailed
from audit.heads import SignedTreeHead, TreeHeadSigner, sign_tree_head
from audit.merkle import CompactRange, leaf_hash
from audit.partitions import ensure_partitions
from audit.schema import audit_heads, audit_leaves, audit_nodes, audit_queue
from cofre.background import LoopHealth
from cofre.dberrors import db_error_name

# Any constant unique to Cofre: the advisory lock key of the sequencer.
_ADVISORY_LOCK_KEY: Final = 0x436F667265  # "Cofre"
# Held (waiting) by an audit key handover (`audit.handover`): no head is signed meanwhile.
SEQUENCER_LOCK_KEY: Final = _ADVISORY_LOCK_KEY
DEFAULT_BATCH: Final = 5000
PARTITION_CHECK_SECONDS: Final = 3600.0
# The queue's depth is counted up to this many rows: a scrape reads at most that much of
# the queue's primary key however long a stall lasts (a reading of the cap means "at
# least"; the oldest entry's age is what the stall alert reads).
QUEUE_DEPTH_CAP: Final = 100_000
QUEUE_READING_REUSE_SECONDS: Final = 1.0

_log = structlog.get_logger("cofre.audit.sequencer")


def load_compact_range(connection: Connection, size: int) -> CompactRange:
    """Return the stored tree of `size` leaves as a `CompactRange` (its right border).
    Raises `AuditWriteFailed` when a border node is missing."""
    wanted = CompactRange.border_positions(size)
    if not wanted:
        return CompactRange()
    rows = connection.execute(
        select(audit_nodes.c.level, audit_nodes.c.hash).where(
            or_(*(and_(audit_nodes.c.level == lv, audit_nodes.c.idx == ix) for lv, ix in wanted))
        )
    ).all()
    border = {int(row.level): bytes(row.hash) for row in rows}
    if len(border) != len(wanted):
        raise AuditWriteFailed("the stored tree is missing nodes on its right border")
    return CompactRange(size, border)


@dataclass(frozen=True)
class QueueState:
    """The audit queue as one statement saw it: `depth` entries wait for integration
    (at most `QUEUE_DEPTH_CAP`), the oldest for `oldest_seconds` (None: nothing queued,
    or only rows from before migration 0017, which carry no time)."""

    depth: int
    oldest_seconds: float | None


def tree_size(connection: Connection) -> int:
    size = connection.execute(select(func.max(audit_leaves.c.leaf_index))).scalar()
    return 0 if size is None else int(size) + 1


class Sequencer:
    """Integrates queued entries and signs heads; `run_once` is safe to call from any
    number of threads and processes at once."""

    def __init__(
        self,
        engine: Engine,
        signer: TreeHeadSigner,
        *,
        log_id: str = "cofre",
        sign_every_entries: int = 1000,
        sign_every_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._signer = signer
        self._log_id = log_id
        self._sign_every_entries = sign_every_entries
        self._sign_every_seconds = sign_every_seconds
        self._clock = clock
        self._partitions_due = 0.0
        self.partition_error: str | None = None
        # The last head's tree size and when, by this node's clock, it was first seen:
        # the interval between heads is measured here (`_sign_if_due`).
        self._seen: tuple[int, float] | None = None

    @property
    def log_id(self) -> str:
        return self._log_id

    @property
    def signer(self) -> TreeHeadSigner:
        return self._signer

    def _lock(self, connection: Connection, *, wait: bool) -> bool:
        if connection.dialect.name == "postgresql":
            if wait:
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY}
                )
                return True
            return bool(
                connection.execute(
                    text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY}
                ).scalar()
            )
        return True

    def run_once(
        self, *, batch: int = DEFAULT_BATCH, force_sign: bool = False, wait: bool = False
    ) -> int:
        """Integrate up to `batch` queued entries and sign a head if one is due (or if
        `force_sign` and the tree grew since the last head). Returns how many entries
        were integrated (0 when another node holds the sequencer lock, unless `wait`:
        then it waits for that node's batch to end).

        Raises `AuditWriteFailed` when the database or the signer fails.
        """
        self._maintain_partitions()
        try:
            with self._engine.begin() as connection:
                if not self._lock(connection, wait=wait):
                    return 0
                count = self._integrate(connection, batch)
                self._sign_if_due(connection, force=force_sign)
        except SQLAlchemyError as exc:
            raise AuditWriteFailed(
                f"the audit sequencer could not write ({db_error_name(exc)})"
            ) from None
        return count

    def _maintain_partitions(self) -> None:
        """Have next months' partitions made, at most once per `PARTITION_CHECK_SECONDS`
        (sooner again after a failure). Never raises: a missing partition costs only
        rows in the default partition, a refused audit write would cost an operation."""
        if self._engine.dialect.name != "postgresql":
            return
        now = self._clock()
        if now < self._partitions_due:
            return
        self._partitions_due = now + PARTITION_CHECK_SECONDS
        try:
            with self._engine.begin() as connection:
                ensure_partitions(connection)
        except SQLAlchemyError as exc:
            self._partitions_due = now + 60.0
            self.partition_error = f"cannot make audit partitions ahead ({db_error_name(exc)})"
        else:
            self.partition_error = None

    def drain(self, *, force_sign: bool = True) -> int:
        """Integrate everything queued, then sign a head for the final size. Waits for
        the sequencer lock: an evidence export drains before it looks for a head over
        its cut-off entry, and while another node's sequencer (or this node's own
        thread) held the lock a drain that gave up signed nothing, so the export found
        no head over the period or not even its entries (PostgreSQL)."""
        total = 0
        while True:
            count = self.run_once(force_sign=False, wait=True)
            total += count
            if count < DEFAULT_BATCH:
                break
        self.run_once(force_sign=force_sign, wait=True)
        return total

    def queue_state(self) -> QueueState:
        """How many entries wait for integration (counted up to `QUEUE_DEPTH_CAP`) and
        how many seconds the oldest has waited, by this node's clock (None when nothing
        is queued, or only rows queued before migration 0017, which carry no time). One
        statement over the queue's primary key, never the log: readiness and every
        metrics scrape run it. Raises `AuditWriteFailed` when the queue cannot be read."""
        capped = select(audit_queue.c.entry_id).limit(QUEUE_DEPTH_CAP).subquery()
        oldest = select(audit_queue.c.created_at).order_by(audit_queue.c.entry_id).limit(1)
        try:
            with self._engine.connect() as connection:
                row = connection.execute(
                    select(
                        select(func.count()).select_from(capped).scalar_subquery(),
                        oldest.scalar_subquery(),
                    )
                ).one()
        except SQLAlchemyError as exc:
            raise AuditWriteFailed(
                f"the audit queue could not be read ({db_error_name(exc)})"
            ) from None
        depth, created = int(row[0]), row[1]
        if created is None:
            return QueueState(depth, None)
        if created.tzinfo is None:  # SQLite hands the stored UTC time back naive
            created = created.replace(tzinfo=UTC)
        return QueueState(depth, self._clock() - float(created.timestamp()))

    def _integrate(self, connection: Connection, batch: int) -> int:
        queued = queued_entries(connection, batch)
        if not queued:
            return 0
        tree = load_compact_range(connection, tree_size(connection))
        leaves: list[tuple[object, ...]] = []
        nodes: list[tuple[object, ...]] = []
        for entry_id, payload in queued:
            leaves.append((tree.size, entry_id))
            nodes.extend(tree.append(leaf_hash(payload.encode("utf-8"))))
        insert_values(connection, "audit_leaves (leaf_index, entry_id)", leaves, ("int8", "int8"))
        insert_values(
            connection, "audit_nodes (level, idx, hash)", nodes, ("int2", "int8", "bytea")
        )
        delete_queued(connection, [entry_id for entry_id, _ in queued])
        return len(queued)

    def _sign_if_due(self, connection: Connection, *, force: bool) -> SignedTreeHead | None:
        size = tree_size(connection)
        last = connection.execute(
            select(audit_heads.c.tree_size, audit_heads.c.timestamp_ms)
            .order_by(audit_heads.c.tree_size.desc())
            .limit(1)
        ).first()
        last_size = 0 if last is None else int(last.tree_size)
        if size == 0 or size <= last_size:
            return None
        now = self._clock()
        now_ms = int(now * 1000)
        if self._seen is None or self._seen[0] != last_size:
            # First seen now: its own time if that is past by this clock, else now. Another
            # node's clock may be ahead, and the interval is measured on this one's.
            since = now if last is None else min(now, int(last.timestamp_ms) / 1000)
            self._seen = (last_size, since)
        # Time since the last head in either direction: a clock stepped back (NTP, a VM
        # resumed) made it negative, and no head was signed by time until the clock
        # caught up again, an hour for a step of an hour. The next head then carries the
        # earlier time; heads are ordered by tree size, never by timestamp. Measured from
        # when this node first saw the head (review 31b): from the head's own time, two
        # nodes with clocks apart by the interval, leading in turn, signed on every tick.
        due = (
            force
            or size - last_size >= self._sign_every_entries
            or last is None
            or abs(now - self._seen[1]) >= self._sign_every_seconds
        )
        if not due:
            return None
        root = load_compact_range(connection, size).root()
        head = sign_tree_head(self._signer, self._log_id, size, root, now_ms)
        connection.execute(
            insert(audit_heads).values(
                tree_size=head.tree_size,
                root_hash=head.root_hash,
                timestamp_ms=head.timestamp_ms,
                key_id=head.key_id,
                checkpoint=head.checkpoint,
                signature=head.signature,
            )
        )
        self._seen = (size, now)  # its own head: seen when signed
        return head


def node_lock_path(engine: Engine) -> Path | None:
    """The file on which the worker processes of one node elect their sequencer:
    beside a SQLite database file, else in the temp directory, named by the database's
    address (its password hidden). None for an in-memory database."""
    url = engine.url
    if url.get_backend_name() == "sqlite":
        database = url.database
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        return Path(database + ".sequencer-lock")
    address = url.render_as_string(hide_password=True)
    digest = hashlib.sha256(address.encode("utf-8")).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"cofre-sequencer-{digest}.lock"


class SequencerThread:
    """Runs `Sequencer.run_once` every `interval` seconds in a daemon thread until
    stopped; failures are remembered (for readiness) and retried on the next tick.

    With `node_lock`, the threads of one node's worker processes elect one of them on
    that file (`flock`): the leader sequences, the others stand by and try the lock
    again each tick, with no database work (issue 21: each worker's sequencer polled
    the database five times a second, 3-16% of a worker's GIL time, and on SQLite
    every poll took the writer lock from the group committer). The kernel releases
    the lock when the leader's process dies, and a standby takes over at its next
    tick. Across nodes, the database's own lock elects as before.

    A sequencer that runs but integrates nothing fails no tick: on PostgreSQL a node
    that hung inside its sequencing transaction (stopped, paused, cut off before
    PostgreSQL notices) keeps the lock, and every other node finds it taken and returns.
    `queue_check` names that stall once the oldest queued entry has waited
    `queue_stall_seconds`."""

    def __init__(
        self,
        sequencer: Sequencer,
        interval: float = 0.2,
        *,
        node_lock: Path | None = None,
        queue_stall_seconds: float = 60.0,
    ) -> None:
        self._sequencer = sequencer
        self._queue_stall_seconds = queue_stall_seconds
        self._stalled = False
        self._stall_lock = threading.Lock()
        self._last_reading: tuple[float, QueueState] | None = None
        self._interval = interval
        self._node_lock = node_lock
        self._lock_fd: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="cofre-audit-sequencer", daemon=True
        )
        self.health = LoopHealth("audit sequencer")

    @property
    def last_error(self) -> str | None:
        """Why the last tick failed (e.g. a stored key handover that does not verify)."""
        return self.health.last_error

    @property
    def leading(self) -> bool:
        """Whether this thread sequences (always, without a node lock)."""
        return self._node_lock is None or self._lock_fd is not None

    def _lead(self) -> bool:
        """Hold the node's sequencer lock, or say another process holds it. A lock file
        that cannot be opened elects nobody: then every worker sequences, as without
        one (the database's lock still lets one at a time in)."""
        if self.leading:
            return True
        assert self._node_lock is not None  # noqa: S101 - `leading` is True without one
        try:
            fd = os.open(self._node_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def _resign(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def alive(self) -> bool:
        return self._thread.is_alive() and self.last_error is None

    def queue_check(self) -> str:
        """ "ok", or that queued entries wait for integration, when the oldest has waited
        `queue_stall_seconds`. Informs, never fails readiness: each operation's entry is
        durably queued in the operation's own transaction, and a lock held by one hung
        node would fail every node's readiness at once. Raises `AuditWriteFailed` when
        the queue cannot be read."""
        age = self.queue_state().oldest_seconds
        if age is None or age < self._queue_stall_seconds:
            return "ok"
        return (
            f"entries queued {round(age)} s ago are not yet integrated: the "
            "sequencer lock is held elsewhere (a hung node) or the sequencer cannot keep "
            "up (docs/operations.md, Incident: audit queue stalled)"
        )

    def queue_state(self) -> QueueState:
        """The queue's depth and its oldest entry's age (`Sequencer.queue_state`), for
        readiness and the metrics alike. Logs ``audit queue stalled`` when the oldest
        has waited `queue_stall_seconds` and ``audit queue drained`` when that ends, once
        per change whichever of the two read it. A reading younger than
        `QUEUE_READING_REUSE_SECONDS` is answered again: the two gauges of one scrape
        and a readiness probe beside it cost one statement. Raises `AuditWriteFailed` when the queue
        cannot be read."""
        with self._stall_lock:
            last = self._last_reading
        if last is not None and time.monotonic() - last[0] < QUEUE_READING_REUSE_SECONDS:
            return last[1]
        state = self._sequencer.queue_state()
        age = state.oldest_seconds
        stalled = age is not None and age >= self._queue_stall_seconds
        with self._stall_lock:  # readiness and a scrape may read at once
            changed, self._stalled = stalled != self._stalled, stalled
            self._last_reading = (time.monotonic(), state)
        if changed and stalled:
            _log.warning("audit queue stalled", oldest_queued_seconds=round(age or 0.0))
        elif changed:
            _log.info("audit queue drained")
        return state

    def _loop(self) -> None:
        try:
            self._tick_until_stopped()
        finally:
            self._resign()

    def _tick_until_stopped(self) -> None:
        while not self._stop.wait(self._interval):
            if not self._lead():
                continue
            try:
                self._sequencer.run_once()
            except Exception as exc:  # noqa: BLE001 - the loop must survive to report it
                self.health.failed(exc)
            else:
                self.health.succeeded()
