"""The evidence export's cut-off: the ``evidence.cutoff`` audit entry that ends a
bundle's period at the latest (`compliance.export.write_bundle`)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine

from audit.log import AuditEvent, AuditLog, Outcome


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
