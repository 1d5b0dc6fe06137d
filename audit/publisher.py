"""Publishing signed tree heads to witnesses and keeping their cosignatures.

IN PCI SCOPE. Next to the sequencer, one at a time: a `PublisherThread` sends the newest
signed head to every configured witness (c2sp.org/tlog-witness add-checkpoint) with a
consistency proof from the last size that witness cosigned, verifies each answer
against the witness's pinned key, and stores the cosignatures (`audit_cosignatures`).
Before a head the rotated audit key signed, it submits the key's handover checkpoint
and keeps the witness's cosignature of it too (`audit_handover_cosignatures`): bundles
carry them, since only the witnesses' cosignature shows an auditor that a handover was
not one HSM PIN holder's alone (a witness follows only a key its operator pinned).
It never blocks a write: a witness that is down or refuses is logged, remembered
(`last_errors`), counted by witness and reason (`failures`: ``unreachable``,
``refused``, ``invalid_cosignature``; the ``cofre.audit.witness.publish_failures``
metric) and retried on the next tick. A refusal or an invalid cosignature is also an
audit entry (``audit.witness.refused``), once each time a witness starts refusing for a
reason (a refusal does not write an entry per retry: each entry makes a new head).

A witness that answers 409 names the size it last cosigned; the publisher retries once
from there. When that size is beyond this log's, or the proof from it does not verify
(422), the witness has seen another history: the log was rolled back (a restore) or
forked, and the head stays unwitnessed, which every verifier then reports. The size a
409 names is a hint for that one retry only, never remembered: an answer that lied
(a forged 409 naming a size beyond the log's) would otherwise stop the publisher from
submitting to the witness again, or skip a key handover for good. What the publisher
remembers of a witness comes from its 200 answers and the cosignatures stored.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog
from sqlalchemy import Connection, Engine, Table, bindparam, func, insert, select
from sqlalchemy.exc import SQLAlchemyError

from audit.errors import InvalidCosignature, NoteError, WitnessRefused
from audit.heads import SignedTreeHead, head_note
from audit.log import AuditEvent, AuditLog, Outcome
from audit.note import (
    ALG_COSIGNATURE_V1,
    NoteSignature,
    VerifierKey,
    add_checkpoint_body,
    parse_checkpoint,
    parse_note,
    parse_signature_lines,
)
from audit.schema import READ_ONLY, audit_cosignatures, audit_handover_cosignatures
from audit.store import AuditStore
from cofre.errors import CofreError

_log = structlog.get_logger("cofre.audit")

REFUSED: Final = "audit.witness.refused"
# Why a witness gave no cosignature: the label of `CheckpointPublisher.failures`.
UNREACHABLE: Final = "unreachable"
REFUSED_REASON: Final = "refused"
INVALID_COSIGNATURE: Final = "invalid_cosignature"


def failure_reason(exc: Exception) -> str:
    """``invalid_cosignature`` for an answer that is not a valid cosignature of the
    head, ``refused`` for a witness that said no (or a log it has seen beyond), else
    ``unreachable`` (no HTTP answer: down, network, TLS)."""
    if isinstance(exc, InvalidCosignature | NoteError):
        return INVALID_COSIGNATURE
    if isinstance(exc, WitnessRefused):
        return REFUSED_REASON
    return UNREACHABLE


@dataclass(frozen=True)
class PinnedWitness:
    """A witness: where to submit, and the cosignature/v1 key its answers must carry."""

    url: str
    key: VerifierKey
    ca_file: Path | None = None

    @property
    def name(self) -> str:
        return self.key.name


# (witness, request body) -> (HTTP status, content type, body text). The wiring adapts
# `witness.client.submit_checkpoint`; raising a `CofreError` means "no answer".
Submit = Callable[[PinnedWitness, bytes], tuple[int, str, str]]


# The newest tree size a witness key cosigned, through migration 0016's index (witness,
# key_id, tree_size): one probe however long the log and however far the witness trails.
# Along the primary key (tree size first) a pinned witness that had stopped cosigning, or
# never had, cost a walk of every stored cosignature at each metrics scrape, readiness
# probe and publisher round (166 ms at 2,000,000 rows on PostgreSQL).
NEWEST_COSIGNED: Final = (
    select(audit_cosignatures.c.tree_size)
    .where(
        audit_cosignatures.c.witness == bindparam("witness"),
        audit_cosignatures.c.key_id == bindparam("key_id"),
    )
    .order_by(audit_cosignatures.c.tree_size.desc())
    .limit(1)
)


def newest_cosigned(connection: Connection, witness: str, key_id: int) -> int:
    """Return the newest tree size the key `key_id` of `witness` cosigned (0 for none)."""
    size = connection.execute(NEWEST_COSIGNED, {"witness": witness, "key_id": key_id}).scalar()
    return 0 if size is None else int(size)


def cosignatures_of(
    engine: Engine, tree_size: int, table: Table = audit_cosignatures
) -> list[NoteSignature]:
    """Return the stored cosignatures of the head of `tree_size` (of the handover at
    `tree_size` with `table` ``audit_handover_cosignatures``) as note signatures."""
    with engine.execution_options(**READ_ONLY).connect() as connection:
        rows = connection.execute(select(table).where(table.c.tree_size == tree_size)).all()
    return [
        NoteSignature(
            str(r.witness), int(r.key_id), int(r.timestamp).to_bytes(8, "big") + bytes(r.signature)
        )
        for r in rows
    ]


def witnessed_note(engine: Engine, head: SignedTreeHead, public_key_pem: bytes) -> str:
    """Return `head` as a signed note with the vault's signature and every stored
    cosignature: what a bundle carries and any note verifier opens."""
    lines = "".join(s.line() for s in cosignatures_of(engine, head.tree_size))
    return head_note(head, public_key_pem) + lines


def witnessed_handover_notes(engine: Engine, notes: Sequence[str]) -> list[str]:
    """Return each handover note of `notes` with every stored witness cosignature of it
    appended (a C2SP signed note: both audit keys' signatures, then the witnesses'),
    what a bundle carries and any note verifier opens."""
    witnessed = []
    for note in notes:
        size = parse_checkpoint(parse_note(note)[0]).size
        lines = cosignatures_of(engine, size, audit_handover_cosignatures)
        witnessed.append(note + "".join(s.line() for s in lines))
    return witnessed


class CheckpointPublisher:
    """Sends the newest head to each witness; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        witnesses: Sequence[PinnedWitness],
        public_key_pem: Callable[[], bytes],
        submit: Submit,
    ) -> None:
        for witness in witnesses:
            if witness.key.algorithm != ALG_COSIGNATURE_V1:
                raise WitnessRefused(f"witness {witness.name}: not a cosignature/v1 key")
        self._engine = self.engine = engine
        self._store = AuditStore(engine)
        self.witnesses = list(witnesses)
        self._public_key_pem = public_key_pem
        self._submit = submit
        self._lock = threading.Lock()
        # The size each witness last cosigned, as its verified 200 answers showed (never
        # a 409's size: see the module docstring); else read from `_cosigned_size`.
        self._known: dict[str, int] = {}
        # The audit key handovers each witness has taken, by size (`_publish_handovers`).
        self._handed: dict[str, set[int]] = {}
        self.last_errors: dict[str, str] = {}
        # Failed publications by (witness name, reason), since this process started.
        self.failures: Counter[tuple[str, str]] = Counter()
        # The reason each witness's current run of refusals was audited with.
        self._audited: dict[str, str] = {}

    def publish_once(self) -> dict[str, str]:
        """Publish the newest head to every witness that has not cosigned it. Returns
        each witness's outcome ("cosigned <size>", "current", or the error); never
        raises for a witness's failure."""
        with self._lock:
            head = self._store.latest_head()
            if head is None:
                return {}
            outcomes = {}
            for witness in self.witnesses:
                try:
                    self._publish_handovers(witness)
                    outcomes[witness.name] = self._publish(witness, head)
                    self.last_errors.pop(witness.name, None)
                    self._audited.pop(witness.name, None)
                except (CofreError, NoteError) as exc:
                    # NoteError: the answer is not a valid cosignature of this head.
                    reason = failure_reason(exc)
                    self.failures[(witness.name, reason)] += 1
                    outcomes[witness.name] = self.last_errors[witness.name] = str(exc)
                    _log.warning(
                        "witness did not cosign",
                        witness=witness.name,
                        reason=reason,
                        error=str(exc),
                    )
                    if reason != UNREACHABLE:
                        self._audit_refusal(witness, head, reason, str(exc))
            return outcomes

    def _audit_refusal(
        self, witness: PinnedWitness, head: SignedTreeHead, reason: str, error: str
    ) -> None:
        """Write ``audit.witness.refused`` when `witness` starts refusing for `reason`
        (not on every retry). A database that cannot take it is retried next time."""
        if self._audited.get(witness.name) == reason:
            return
        event = AuditEvent(
            action=REFUSED,
            outcome=Outcome.FAILED,
            actor="cofre",
            details={
                "witness": witness.name,
                "reason": reason,
                "tree_size": head.tree_size,
                "error": error[:500],
            },
        )
        try:
            with self._engine.begin() as connection:
                AuditLog().append(connection, event)
        except SQLAlchemyError as exc:
            _log.warning("witness refusal not audited yet", error=type(exc).__name__)
            return
        self._audited[witness.name] = reason

    def _cosigned_size(self, witness: PinnedWitness) -> int:
        with self._engine.execution_options(**READ_ONLY).connect() as connection:
            return newest_cosigned(connection, witness.name, witness.key.key_id)

    def _holds_cosignature(
        self,
        witness: PinnedWitness,
        tree_size: int,
        checkpoint: str,
        table: Table = audit_cosignatures,
    ) -> bool:
        """Whether a stored cosignature by `witness` in `table` verifies on the
        `checkpoint` text at `tree_size` (a stored row for a rewritten head does not:
        the head is submitted, and refused, again)."""
        for signature in cosignatures_of(self._engine, tree_size, table):
            if witness.key.matches(signature):
                try:
                    witness.key.verify(checkpoint, signature.signature)
                except NoteError:
                    return False
                return True
        return False

    def _publish(self, witness: PinnedWitness, head: SignedTreeHead) -> str:
        old = self._known.get(witness.name)
        if old is None:
            old = self._cosigned_size(witness)
        if old == head.tree_size and self._holds_cosignature(
            witness, head.tree_size, head.checkpoint
        ):
            return "current"
        # The key that signed this head: before a handover's size, the old one.
        note = head_note(
            head, self._store.key_chain(self._public_key_pem()).pem_for(head.tree_size)
        )
        for attempt in range(2):
            if old > head.tree_size:
                raise WitnessRefused(
                    f"witness {witness.name} has cosigned size {old}, beyond this log's "
                    f"{head.tree_size}: the log was rolled back (a restore?) or forked"
                )
            proof = self._store.consistency_proof(old, head.tree_size) if old else []
            status, content_type, text = self._submit(
                witness, add_checkpoint_body(old, proof, note)
            )
            if status == 200:
                self._store_cosignatures(witness, head.tree_size, head.checkpoint, text)
                self._known[witness.name] = head.tree_size
                return f"cosigned {head.tree_size}"
            if status == 409 and content_type.startswith("text/x.tlog.size") and attempt == 0:
                try:
                    old = int(text.strip())
                except ValueError:
                    break
                continue  # a hint for this retry, not kept: a 409 proves nothing
            if status == 422:
                raise WitnessRefused(
                    f"witness {witness.name} refused head {head.tree_size} as inconsistent "
                    f"with the size {old} it cosigned: the log was rewritten or forked"
                )
            break
        raise WitnessRefused(
            f"witness {witness.name} refused head {head.tree_size}: HTTP {status} "
            f"{text.strip()[:200]}"
        )

    def _publish_handovers(self, witness: PinnedWitness) -> None:
        """Submit each audit key handover (`audit.handover`) the witness has not taken
        yet, in order, before any head the new key signed: a witness pinned to the old
        key follows the handover (signed by both keys) and then cosigns the new key's
        heads. The witness's cosignature of the handover is verified and stored
        (`audit_handover_cosignatures`). A witness already past a handover's size has
        followed it; if its cosignature was not kept then (a vault before migration
        0011), none can be had now, which is logged. Only a size the publisher knows
        (stored cosignatures, a 200 answer) counts as past: when only a 409 claims the
        witness is past a handover, that is logged and the handover left to the next
        cycle (the heads are still submitted). Raises `WitnessRefused` when the
        witness refuses a handover, `InvalidCosignature` when it answers without a
        valid cosignature of it."""
        done = self._handed.setdefault(witness.name, set())
        for note in self._store.handover_notes():
            text = parse_note(note)[0]
            size = parse_checkpoint(text).size
            if size in done or self._holds_cosignature(
                witness, size, text, audit_handover_cosignatures
            ):
                done.add(size)
                continue
            old = self._known.get(witness.name)
            if old is None:
                old = self._cosigned_size(witness)
            hinted = False  # whether `old` is a 409's size rather than one we know
            for attempt in range(2):
                if old > size and hinted:
                    # Unproven (a 409 may be forged): not taken as done, tried next cycle.
                    _log.warning(
                        "witness says it is past the audit key handover, without its "
                        "cosignature of it; retried next cycle",
                        witness=witness.name,
                        tree_size=size,
                        witness_size=old,
                    )
                    return
                if old > size:
                    # Cosigned a later head: only possible once it followed.
                    _log.warning(
                        "no cosignature of the audit key handover kept from this witness",
                        witness=witness.name,
                        tree_size=size,
                    )
                    break
                proof = self._store.consistency_proof(old, size) if 0 < old < size else []
                status, content_type, answer = self._submit(
                    witness, add_checkpoint_body(old, proof, note)
                )
                if status == 200:
                    self._store_cosignatures(
                        witness, size, text, answer, audit_handover_cosignatures
                    )
                    self._known[witness.name] = size
                    _log.info("witness took the audit key handover", witness=witness.name)
                    break
                if status == 409 and content_type.startswith("text/x.tlog.size") and attempt == 0:
                    try:
                        old = int(answer.strip())
                    except ValueError:
                        pass
                    else:
                        hinted = True
                        continue
                raise WitnessRefused(
                    f"witness {witness.name} refused the audit key handover at size {size}: "
                    f"HTTP {status} {answer.strip()[:200]}"
                )
            done.add(size)

    def _store_cosignatures(
        self,
        witness: PinnedWitness,
        tree_size: int,
        checkpoint: str,
        answer: str,
        table: Table = audit_cosignatures,
    ) -> None:
        """Store in `table` the cosignature by `witness` in its `answer` of the
        `checkpoint` text at `tree_size`, once verified. Raises `InvalidCosignature`
        when the answer has none, `NoteError` when it does not verify."""
        rows = []
        for signature in parse_signature_lines(answer):
            if not witness.key.matches(signature):
                continue  # another key of the same witness: not pinned, ignored
            timestamp = witness.key.verify(checkpoint, signature.signature)
            rows.append(
                {
                    "tree_size": tree_size,
                    "witness": witness.name,
                    "key_id": witness.key.key_id,
                    "timestamp": timestamp,
                    "signature": signature.signature[8:],
                }
            )
        if not rows:
            raise InvalidCosignature(f"witness {witness.name} answered without a valid cosignature")
        with self._engine.begin() as connection:
            stored = connection.execute(
                select(func.count()).where(
                    table.c.tree_size == tree_size,
                    table.c.witness == witness.name,
                    table.c.key_id == witness.key.key_id,
                )
            ).scalar_one()
            if not stored:
                connection.execute(insert(table), rows[:1])


class PublisherThread:
    """Runs `CheckpointPublisher.publish_once` every `interval` seconds until stopped."""

    def __init__(self, publisher: CheckpointPublisher, interval: float = 1.0) -> None:
        self.publisher = publisher
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="cofre-audit-publisher", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.publisher.publish_once()
            except Exception as exc:  # noqa: BLE001 - the loop must survive to retry
                _log.warning("checkpoint publishing failed", error=type(exc).__name__)
