"""The HSM's audit key as the audit log's tree-head signer.

IN PCI SCOPE. `audit` may not import `hsm` (import-linter), so the vault adapts one to
the other here.
"""

from __future__ import annotations

from hsm.provider import HSMProvider


class HSMTreeHeadSigner:
    """Signs checkpoints with the EC key `label` that never leaves the HSM."""

    def __init__(self, provider: HSMProvider, label: str) -> None:
        self._provider = provider
        self._label = label

    @property
    def key_id(self) -> str:
        return self._label

    def sign(self, message: bytes) -> bytes:
        return self._provider.sign(self._label, message)

    def public_key_pem(self) -> bytes:
        return self._provider.public_key_pem(self._label)
