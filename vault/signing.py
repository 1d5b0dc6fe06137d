"""The HSM's audit key as the audit log's tree-head signer.

IN PCI SCOPE. `audit` may not import `hsm` (import-linter), so the vault adapts one to
the other here.
"""

from __future__ import annotations

from sqlalchemy import Engine

from audit.handover import current_label
from audit.schema import READ_ONLY
from hsm.errors import HSMKeyNotFound
from hsm.keys import KeyHierarchy, KeyKind
from hsm.provider import HSMProvider
from vault.key_registry import KeyRegistry


class HSMTreeHeadSigner:
    """Signs checkpoints with the EC key `label` that never leaves the HSM; with no
    label, the vault's current audit key, looked up at each use (so a vault can start
    while the HSM is still coming up, and every node follows a key rotation at once).

    The current key is the one the newest handover in the database introduced
    (`audit.handover`; read every time, never cached: a node that kept signing with the
    old key after another node's rotation would make heads no verifier accepts); before
    any handover, the newest registered ``cofre-audit-vN`` (the newest on the token
    when there is no registry). A handover's key that is not registered as it is on the
    token signs nothing (`HSMKeyNotFound`)."""

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

    @property
    def key_id(self) -> str:
        if self._label is not None:
            return self._label
        if self._engine is not None:
            with self._engine.execution_options(**READ_ONLY).connect() as connection:
                handed = current_label(connection)
            if handed is not None:
                self._require_registered(handed)
                return handed
        if self._registry is not None:
            # The newest registered audit key: a key planted under a newer label never
            # signs.
            return self._registry.current_label(KeyKind.AUDIT)
        # No registry (CLI tools reading the public key): resolved once.
        self._label = KeyHierarchy(self._provider).current_label(KeyKind.AUDIT)
        return self._label

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
