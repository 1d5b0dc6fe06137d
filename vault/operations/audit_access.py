"""Reading the audit log and exporting evidence: authorised and recorded.

IN PCI SCOPE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from audit.log import AuditEvent, DetailValue, Outcome
from cofre.errors import CofreError
from policies.models import Action
from vault._core import VaultCore
from vault.models import CallContext

T = TypeVar("T")


class AuditAccessOperations(VaultCore):
    """Audit access operations of the vault."""

    def evidence_export(self, ctx: CallContext, period: str, build: Callable[[], T]) -> T:
        """Authorise an evidence export, record the read (``evidence.read``), run `build`
        and record the outcome (``evidence.export``): a failed build is recorded as
        failed (with its error code) and re-raised; the success entry is durable before
        the result is returned.

        Raises `PolicyDenied`, `RateLimited`, what `build` raises, `AuditWriteFailed`.
        """
        self._authorize(ctx, Action.EVIDENCE_EXPORT)
        details: dict[str, DetailValue] = {"period": period[:128]}
        # Like the relay's reveal, the read of the audit trail is recorded before it
        # happens (so a bundle of a period that includes now holds its own export).
        self._write_audit(self._audit_event(ctx, "evidence.read", Outcome.SUCCESS, details=details))
        try:
            result = build()
        except Exception as exc:
            details["error"] = exc.code if isinstance(exc, CofreError) else "internal_error"
            self._write_audit(
                self._audit_event(ctx, "evidence.export", Outcome.FAILED, details=details)
            )
            raise
        self._write_audit(
            self._audit_event(ctx, "evidence.export", Outcome.SUCCESS, details=details)
        )
        return result

    def record(self, event: AuditEvent) -> None:
        """Write `event` durably in its own transaction (the API's entry for a request
        that ended before any operation ran). Raises `AuditWriteFailed`,
        `StorageUnavailable`."""
        self._write_audit(event)

    def audit_read(self, ctx: CallContext, what: str) -> None:
        """Authorise reading the audit log (heads, proofs, exports) and record it."""
        self._authorize(ctx, Action.AUDIT_READ)
        self._write_audit(
            self._audit_event(ctx, Action.AUDIT_READ, Outcome.SUCCESS, details={"what": what})
        )
