"""The audit entry of a policy load or reload: its source, SHA-256 and whole text.

IN PCI SCOPE (as evidence). An evidence bundle takes the policy versions in force from
these entries (tied to the log by inclusion proofs), never from the file on disk, which
may have been edited without a reload.
"""

from __future__ import annotations

import hashlib
from typing import Final

from audit.log import AuditEvent, HexDigest, Outcome

POLICY_ACTIONS: Final = ("policy.load", "policy.reload")


def policy_event(action: str, *, actor: str, source: str, text: str | None) -> AuditEvent:
    """Return the entry for `action` (`policy.load` or `policy.reload`) of `text`.

    Without `text` (a policy built in code) only the source is recorded.
    """
    details: dict[str, str | int | bool | None] = {"source": source}
    if text is not None:
        # Kept exactly (`HexDigest`): a SHA-256 may hold a Luhn-valid run of 13+ decimal
        # digits, and masking it would record a hash that matches no policy text.
        details["sha256"] = HexDigest(hashlib.sha256(text.encode("utf-8")).hexdigest())
    return AuditEvent(
        action=action, outcome=Outcome.SUCCESS, actor=actor, details=details, document=text
    )
