"""The evidence export's cut-off: the ``evidence.cutoff`` audit entry that ends a
bundle's period at the latest, and the drain that signs a head over it
(`compliance.export.write_bundle`)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine

from audit.errors import AuditWriteFailed
from audit.log import AuditEvent, AuditLog, Outcome
from audit.sequencer import Sequencer
from compliance.errors import EvidenceUnavailable


def write_cutoff(engine: Engine, generator: str) -> datetime:
    """Write the export's ``evidence.cutoff`` entry and return a time at or before the
    entry's own: the latest end the bundle's period may have."""
    at = datetime.now(UTC)
    event = AuditEvent(
        action="evidence.cutoff",
        outcome=Outcome.SUCCESS,
        actor=generator,
        details={"reason": "an evidence bundle's period ends at the latest here"},
    )
    with engine.begin() as connection:
        AuditLog().append(connection, event)
    return at


def sign_over_cutoff(sequencer: Sequencer) -> None:
    """Integrate the queue and sign a head over the cut-off entry. A sequencer that
    cannot (its lock held by a hung node past the statement timeout, the database
    gone) leaves the entries queued, nothing lost: the export cannot be made now,
    which is `EvidenceUnavailable` (503 `evidence_unavailable`, docs/operations.md,
    "Incident: audit queue stalled"), not the `audit_unavailable` of an audit entry
    that could not be written (drill of session 33)."""
    try:
        sequencer.drain(force_sign=True)
    except AuditWriteFailed as exc:
        raise EvidenceUnavailable(f"no signed head covers the period now: {exc}") from None
