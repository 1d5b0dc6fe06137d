"""Errors of the adapter tier (out of PCI scope, so not rooted at `cofre.errors`).

AdapterError
└── VaultCallFailed     the vault answered with problem+json; `code` is its code
"""

from __future__ import annotations


class AdapterError(Exception):
    code: str = "adapter_error"


class VaultCallFailed(AdapterError):
    def __init__(self, code: str, status: int, detail: str) -> None:
        super().__init__(f"vault refused the call: {code} ({status}): {detail}")
        self.code = code
        self.status = status
        self.detail = detail
