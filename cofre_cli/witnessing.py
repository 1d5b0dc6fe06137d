"""Wiring of witnessed checkpoints: the sequencer's thread and, when witnesses are
configured (`COFRE_AUDIT__WITNESSES`), the publisher that sends each head to them.

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from audit.errors import NoteError
from audit.heads import log_origin, log_verifier_key
from audit.note import VerifierKey
from audit.publisher import (
    INVALID_COSIGNATURE,
    REFUSED_REASON,
    UNREACHABLE,
    CheckpointPublisher,
    PinnedWitness,
    PublisherThread,
)
from audit.sequencer import QueueState, Sequencer, SequencerThread, node_lock_path
from audit.store import AuditStore
from audit.witness_lag import witness_lag
from audit.witnessed import check_witness_view
from cofre.errors import CofreError, ConfigurationError
from cofre.settings import Settings


def ask_witnesses(
    settings: Settings, store: AuditStore, pinned: list[VerifierKey], pem: bytes
) -> list[str]:
    """Ask each configured witness whose key is among `pinned` for its latest cosigned
    checkpoint of this log and check the log still holds it (`check_witness_view`).
    Returns a warning per witness that could not be asked; raises
    `AuditVerificationFailed` when one has seen a checkpoint the log no longer holds."""
    from witness.client import latest_checkpoint

    origin = log_origin(settings.audit.log_id)
    log_keys = [log_verifier_key(origin, key) for key in store.key_chain(pem).pems()]
    warnings = []
    for configured in settings.audit.witnesses:
        try:
            configured_key = VerifierKey.parse(configured.vkey)
        except NoteError:
            continue
        key = next((k for k in pinned if k == configured_key), None)
        if key is None:
            continue  # not a witness the auditor pinned: its word counts for nothing
        try:
            note = latest_checkpoint(configured.url, origin, ca_file=configured.ca_file)
        except CofreError as exc:
            warnings.append(f"warning: could not ask witness {key.name}: {exc}")
            continue
        if note is not None:
            check_witness_view(store, note, key, log_keys)
    return warnings


def start_audit_workers(
    settings: Settings, engine: Engine, sequencer: Sequencer, interval: float
) -> tuple[SequencerThread, PublisherThread | None]:
    """Start the sequencer's thread and, with witnesses configured, the publisher's."""
    thread = SequencerThread(
        sequencer,
        interval=interval,
        node_lock=node_lock_path(engine),
        queue_stall_seconds=settings.audit.queue_stall_seconds,
    )
    thread.start()
    return thread, start_publisher(settings, engine, sequencer)


def checkpoint_publisher(
    settings: Settings, engine: Engine, sequencer: Sequencer
) -> CheckpointPublisher | None:
    """The publisher of heads to the configured witnesses, or None when there are none.
    Raises `ConfigurationError` for a witness vkey that is not a cosignature/v1 key."""
    from audit.errors import NoteError
    from witness.client import submit_checkpoint

    if not settings.audit.witnesses:
        return None
    pinned = []
    for configured in settings.audit.witnesses:
        try:
            key = VerifierKey.parse(configured.vkey)
        except NoteError as exc:
            raise ConfigurationError(f"witness {configured.url}: {exc}") from None
        pinned.append(PinnedWitness(configured.url, key, configured.ca_file))

    def submit(witness: PinnedWitness, body: bytes) -> tuple[int, str, str]:
        answer = submit_checkpoint(witness.url, body, ca_file=witness.ca_file)
        return answer.status, answer.content_type, answer.text

    try:
        return CheckpointPublisher(engine, pinned, sequencer.signer.public_key_pem, submit)
    except CofreError as exc:
        raise ConfigurationError(str(exc)) from None


def start_publisher(
    settings: Settings, engine: Engine, sequencer: Sequencer
) -> PublisherThread | None:
    publisher = checkpoint_publisher(settings, engine, sequencer)
    if publisher is None:
        return None
    thread = PublisherThread(publisher, interval=settings.audit.publish_interval_seconds)
    thread.start()
    return thread


def observe_witnesses(meter: Meter, thread: PublisherThread | None, quorum: int) -> None:
    """Report the publisher's health (with witnesses configured) at each metrics
    collection (docs/operations.md says what to alert on):

    - ``cofre.audit.witness.publish_failures`` (counter, by ``witness`` and ``reason``:
      ``unreachable``, ``refused``, ``invalid_cosignature``): publications that got no
      cosignature, since the process started;
    - ``cofre.audit.witness.lag_entries`` / ``lag_seconds`` (gauges, by ``witness``, and
      ``witness="quorum"`` for the newest head that `quorum` witnesses cosigned): how
      far that cosigned checkpoint trails the newest signed head, in entries, and how
      long the oldest head not cosigned has waited.

    The lag gauges are skipped while the database cannot answer."""
    if thread is None:
        return
    publisher = thread.publisher
    keys = [witness.key for witness in publisher.witnesses]

    def failures(_options: CallbackOptions) -> Iterable[Observation]:
        counted = dict(publisher.failures)
        return [
            Observation(
                counted.get((witness.name, reason), 0), {"witness": witness.name, "reason": reason}
            )
            for witness in publisher.witnesses
            for reason in (UNREACHABLE, REFUSED_REASON, INVALID_COSIGNATURE)
        ]

    def lags(pick: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            try:
                lag = witness_lag(publisher.engine, keys, quorum)
            except (CofreError, SQLAlchemyError):
                return []
            series = {**lag.witnesses, "quorum": lag.quorum}
            return [Observation(getattr(v, pick), {"witness": k}) for k, v in series.items()]

        return observe

    meter.create_observable_counter(
        "cofre.audit.witness.publish_failures",
        callbacks=[failures],
        description="tree heads a witness did not cosign, by witness and reason",
    )
    meter.create_observable_gauge(
        "cofre.audit.witness.lag_entries",
        callbacks=[lags("entries")],
        description="entries between the newest cosigned checkpoint and the newest head",
    )
    meter.create_observable_gauge(
        "cofre.audit.witness.lag_seconds",
        unit="s",
        callbacks=[lags("seconds")],
        description="how long the oldest head not yet cosigned has waited (0: current)",
    )


def observe_audit_queue(meter: Meter, thread: SequencerThread) -> None:
    """Report the audit queue at each metrics collection (`SequencerThread.queue_state`,
    one statement for both gauges; docs/operations.md, "What to watch"):

    - ``cofre.audit.queue.depth``: entries written but not yet integrated into the tree
      (counted up to `QUEUE_DEPTH_CAP`);
    - ``cofre.audit.queue.oldest_seconds``: how long the oldest of them has waited (0
      when none waits). Above ``COFRE_AUDIT__QUEUE_STALL_SECONDS`` readiness names a
      stall; this is what an alert reads, since readiness never fails on it.

    The queue is the database's, so every node (and every worker) reports the same
    values. Skipped while the database cannot answer."""

    def observe(pick: Callable[[QueueState], float]) -> Callable[..., Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            try:
                return [Observation(pick(thread.queue_state()))]
            except CofreError:
                return []

        return callback

    meter.create_observable_gauge(
        "cofre.audit.queue.depth",
        callbacks=[observe(lambda state: state.depth)],
        description="audit entries written but not yet integrated into the tree",
    )
    meter.create_observable_gauge(
        "cofre.audit.queue.oldest_seconds",
        unit="s",
        callbacks=[observe(lambda state: state.oldest_seconds or 0.0)],
        description="how long the oldest audit entry not yet integrated has waited (0: none)",
    )


def witness_checks(thread: PublisherThread | None, quorum: int) -> dict[str, str]:
    """Readiness's ``audit_witnesses`` (nothing without witnesses): ``ok`` when the newest
    head has the quorum's cosignatures, else what is missing. Reported, never failing
    readiness: a witness's outage must not stop the vault, it only leaves the newest
    entries without evidence a QSA accepts yet (alert on the lag metric)."""
    if thread is None:
        return {}
    publisher = thread.publisher
    lag = witness_lag(publisher.engine, [w.key for w in publisher.witnesses], quorum)
    if lag.quorum.entries == 0:
        return {"audit_witnesses": "ok"}
    failing = ", ".join(f"{name}: {error}" for name, error in sorted(publisher.last_errors.items()))
    return {
        "audit_witnesses": f"witness quorum ({quorum}) not reached for the newest "
        f"{lag.quorum.entries} entries ({lag.quorum.seconds:.0f} s)"
        + (f"; {failing}" if failing else "")
    }
