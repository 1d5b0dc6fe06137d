"""Wiring of witnessed checkpoints: the sequencer's thread and, when witnesses are
configured (`COFRE_AUDIT__WITNESSES`), the publisher that sends each head to them.

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

from sqlalchemy import Engine

from audit.errors import NoteError
from audit.heads import log_origin, log_verifier_key
from audit.note import VerifierKey
from audit.publisher import CheckpointPublisher, PinnedWitness, PublisherThread
from audit.sequencer import Sequencer, SequencerThread
from audit.store import AuditStore
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
    log_keys = [log_verifier_key(origin, pem)]
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


def stop_publisher(thread: PublisherThread | None) -> None:
    if thread is not None:
        thread.stop()


def start_audit_workers(
    settings: Settings, engine: Engine, sequencer: Sequencer, interval: float
) -> tuple[SequencerThread, PublisherThread | None]:
    """Start the sequencer's thread and, with witnesses configured, the publisher's."""
    thread = SequencerThread(sequencer, interval=interval)
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
