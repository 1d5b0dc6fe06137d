"""The HSM's audit key as the audit log's tree-head signer.

IN PCI SCOPE. `audit` may not import `hsm` (import-linter), so the vault adapts one to
the other here.
"""

from __future__ import annotations

from hsm.keys import KeyHierarchy, KeyKind
from hsm.provider import HSMProvider
from vault.key_registry import KeyRegistry


class HSMTreeHeadSigner:
    """Signs checkpoints with the EC key `label` that never leaves the HSM; with no
    label, the newest ``cofre-audit-vN`` on the token, looked up at first use (so a vault
    can start while the HSM is still coming up)."""

    def __init__(
        self, provider: HSMProvider, label: str | None = None, registry: KeyRegistry | None = None
    ) -> None:
        self._provider = provider
        self._label = label
        self._registry = registry

    @property
    def key_id(self) -> str:
        if self._label is None:
            # With a registry (the vault), the newest registered audit key: a key planted
            # under a newer label never signs.
            self._label = (
                self._registry.current_label(KeyKind.AUDIT)
                if self._registry is not None
                else KeyHierarchy(self._provider).current_label(KeyKind.AUDIT)
            )
        return self._label

    def sign(self, message: bytes) -> bytes:
        return self._provider.sign(self.key_id, message)

    def public_key_pem(self) -> bytes:
        return self._provider.public_key_pem(self.key_id)
