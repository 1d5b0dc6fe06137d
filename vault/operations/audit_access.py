"""Reading the audit log (signed heads, Merkle proofs) and exporting evidence: each
authorised and recorded.

IN PCI SCOPE. The API reaches the audit log only through here (architecture: api ->
vault, policies), so every read is authorised and audited in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TypeVar

from audit.errors import ProofError
from audit.heads import SignedTreeHead
from audit.log import AuditEvent, DetailValue, Outcome
from audit.merkle import leaf_hash
from audit.store import AuditStore
from cofre.errors import CofreError
from policies.models import Action
from vault._core import VaultCore
from vault.errors import AuditRecordNotFound
from vault.models import AuditConsistencyProof, AuditInclusionProof, CallContext

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

    @cached_property
    def _audit_store(self) -> AuditStore:
        # The log this vault writes, read over read-only connections.
        return AuditStore(self._engine)

    def audit_head(self, ctx: CallContext) -> SignedTreeHead | None:
        """Authorise and record the read, then return the latest signed tree head of the
        audit log (None before the first). Raises `PolicyDenied`, `RateLimited`,
        `AuditWriteFailed`, `AuditReadFailed`."""
        self.audit_read(ctx, "head")
        return self._audit_store.latest_head()

    def audit_inclusion_proof(
        self, ctx: CallContext, index: int, size: int | None = None
    ) -> AuditInclusionProof:
        """Authorise and record the read, then return the inclusion proof of entry
        `index` in the tree of `size` entries (default: the whole tree). Raises
        `AuditRecordNotFound` (no such entry or size), `PolicyDenied`, `RateLimited`,
        `AuditWriteFailed`, `AuditReadFailed`."""
        self.audit_read(ctx, "inclusion proof")
        store = self._audit_store
        try:
            tree_size = size if size is not None else store.size()
            proof = store.inclusion_proof(index, tree_size)
            entry = store.entry(index)
        except ProofError as exc:
            raise AuditRecordNotFound(str(exc)) from None
        return AuditInclusionProof(
            index=index,
            tree_size=tree_size,
            entry=entry,
            leaf_hash=leaf_hash(entry.encode()),
            proof=proof,
        )

    def audit_consistency_proof(
        self, ctx: CallContext, size1: int, size2: int | None = None
    ) -> AuditConsistencyProof:
        """Authorise and record the read, then return the consistency proof from tree
        size `size1` to `size2` (default: the current size). Raises
        `AuditRecordNotFound` (a size outside the log), `PolicyDenied`, `RateLimited`,
        `AuditWriteFailed`, `AuditReadFailed`."""
        self.audit_read(ctx, "consistency proof")
        store = self._audit_store
        try:
            to = size2 if size2 is not None else store.size()
            proof = store.consistency_proof(size1, to)
        except ProofError as exc:
            raise AuditRecordNotFound(str(exc)) from None
        return AuditConsistencyProof(size1=size1, size2=to, proof=proof)
