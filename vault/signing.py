"""The HSM's audit key as the audit log's tree-head signer.

IN PCI SCOPE. `audit` may not import `hsm` (import-linter), so the vault adapts one to
the other here.
"""

from __future__ import annotations

import threading

import structlog
from sqlalchemy import Connection, Engine

from audit.errors import AuditVerificationFailed
from audit.handover import HandoverRow, handover_rows, verified_label
from audit.schema import READ_ONLY
from hsm.errors import HSMKeyNotFound
from hsm.keys import KeyHierarchy, KeyKind, key_label
from hsm.provider import HSMProvider
from vault.key_registry import KeyRegistry

_log = structlog.get_logger("cofre.vault")


class HSMTreeHeadSigner:
    """Signs checkpoints with the EC key `label` that never leaves the HSM; with no
    label, the vault's current audit key, looked up at first use (so a vault can start
    while the HSM is still coming up) and again whenever the stored handovers change (so
    every node follows a key rotation at once).

    The current key is the one the newest handover in the database introduced
    (`audit.handover`; the rows are read every time: a node that kept signing with the
    old key after another node's rotation would make heads no verifier accepts); before
    any handover, the newest registered ``cofre-audit-vN`` (the newest on the token
    when there is no registry). The rows are trusted only as a chain verified from one
    of the vault's registered audit keys, each row's label holding the key its
    note hands over to; the verified result is cached while the rows are unchanged. A
    row that does not verify signs nothing (`AuditVerificationFailed`, fail closed, no
    fallback: a database writer never picks the key), nor does a handover's key that
    is not registered as it is on the token (`HSMKeyNotFound`)."""

    def __init__(
        self,
        provider: HSMProvider,
        label: str | None = None,
        registry: KeyRegistry | None = None,
        engine: Engine | None = None,
    ) -> None:
        self._provider = provider
        self._label = label
        self._registry = registry
        self._engine = engine
        self._verified: tuple[tuple[HandoverRow, ...], str | None] | None = None
        self._resolved: tuple[tuple[HandoverRow, ...], str] | None = None
        self._lock = threading.Lock()

    @property
    def key_id(self) -> str:
        if self._label is not None:
            return self._label
        if self._engine is not None:
            with self._engine.execution_options(**READ_ONLY).connect() as connection:
                rows = handover_rows(connection)
                with self._lock:
                    resolved = self._resolved
                if resolved is not None and resolved[0] == rows:
                    return resolved[1]
                handed = self.handed_over_label(connection)
            # Resolved again only when the handovers change (a rotation on any node).
            # Resolving lists every key on the token (`KeyRegistry.versions`: about 100
            # HSM round trips), twice per head, and the sequencer signs inside its write
            # transaction: with 1 ms per HSM call every head held every commit of the
            # node for a quarter of a second or more (issue 19). A key later swapped on
            # the token under the same label is still reported by readiness
            # (`KeyRegistry.check`) and refused by every verifier (its public key is
            # not the published one).
            label = handed if handed is not None else self._newest_label()
            with self._lock:
                self._resolved = (rows, label)
            return label
        return self._newest_label()

    def _newest_label(self) -> str:
        if self._registry is not None:
            # The newest registered audit key: a key planted under a newer label never
            # signs.
            return self._registry.current_label(KeyKind.AUDIT)
        # No registry (CLI tools reading the public key): resolved once.
        self._label = KeyHierarchy(self._provider).current_label(KeyKind.AUDIT)
        return self._label

    def handed_over_label(self, connection: Connection) -> str | None:
        """The label of the key the newest handover in `connection`'s database
        introduced, verified (see the class docstring); None: no handover. Raises
        `AuditVerificationFailed` or `HSMKeyNotFound` naming what is wrong."""
        rows = handover_rows(connection)
        with self._lock:
            cached = self._verified
        if cached is not None and cached[0] == rows:
            label = cached[1]
        elif rows:
            anchors = [self._provider.public_key_pem(x) for x in self._own_audit_labels()]
            try:
                label = verified_label(rows, anchors, self._provider.public_key_pem)
            except AuditVerificationFailed as exc:
                # Loud: every head waits until an operator repairs the table.
                _log.error("audit signing refused", reason=str(exc))
                raise
            with self._lock:
                self._verified = (rows, label)
        else:
            label = None
        if label is not None:
            self._require_registered(label)
        return label

    def _own_audit_labels(self) -> list[str]:
        """The audit keys a handover chain may start from: those registered as they are
        on the token (recorded at `cofre hsm init`, first start and every ceremony);
        with no registry, those on the token."""
        if self._registry is not None:
            versions = self._registry.versions(KeyKind.AUDIT)
        else:
            versions = KeyHierarchy(self._provider).versions(KeyKind.AUDIT)
        if not versions:
            raise HSMKeyNotFound(
                "no registered audit key on the token: run `cofre hsm init` on a new vault; "
                "on one that has served, restore the HSM's backup (docs/key-ceremony.md)"
            )
        return [key_label(KeyKind.AUDIT, v) for v in versions]

    def _require_registered(self, label: str) -> None:
        if self._registry is None:
            return
        versions = self._registry.versions(KeyKind.AUDIT)
        if label not in {f"cofre-audit-v{v}" for v in versions}:
            raise HSMKeyNotFound(
                f"the audit key {label!r} named by the last handover is not in the key "
                "registry as it is on the token: nothing is signed"
            )

    def sign(self, message: bytes) -> bytes:
        return self._provider.sign(self.key_id, message)

    def public_key_pem(self) -> bytes:
        return self._provider.public_key_pem(self.key_id)
