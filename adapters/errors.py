"""Errors of the adapter tier (out of PCI scope, so not rooted at `cofre.errors`: this
package may not import any in-scope package).

    AdapterError
    └── VaultCallFailed                 the vault answered with problem+json
        ├── VaultDenied                 policy_denied, identity_missing
        ├── VaultRejectedInput          invalid_*, format_not_applicable, batch_item_invalid
        ├── TokenUnknown                token_not_found, token_expired
        ├── VaultThrottled              rate_limited
        ├── UpstreamFailed              upstream_timeout, upstream_unavailable
        └── VaultUnavailable            hsm_unavailable, storage_unavailable, audit_unavailable, ...
"""

from __future__ import annotations

from typing import Final


class AdapterError(Exception):
    code: str = "adapter_error"


class VaultCallFailed(AdapterError):
    """The vault refused or failed a call. `code` is the vault's stable problem code."""

    def __init__(self, code: str, status: int, detail: str, request_id: str | None = None) -> None:
        super().__init__(f"vault refused the call: {code} ({status}): {detail}")
        self.code = code
        self.status = status
        self.detail = detail
        self.request_id = request_id


class VaultDenied(VaultCallFailed):
    pass


class VaultRejectedInput(VaultCallFailed):
    pass


class TokenUnknown(VaultCallFailed):
    pass


class VaultThrottled(VaultCallFailed):
    pass


class UpstreamFailed(VaultCallFailed):
    pass


class VaultUnavailable(VaultCallFailed):
    pass


_BY_CODE: Final[dict[str, type[VaultCallFailed]]] = {
    "policy_denied": VaultDenied,
    "identity_missing": VaultDenied,
    "token_not_found": TokenUnknown,
    "token_expired": TokenUnknown,
    "rate_limited": VaultThrottled,
    "upstream_timeout": UpstreamFailed,
    "upstream_unavailable": UpstreamFailed,
    "hsm_unavailable": VaultUnavailable,
    "storage_unavailable": VaultUnavailable,
    "audit_unavailable": VaultUnavailable,
    "data_key_missing": VaultUnavailable,
    "not_ready": VaultUnavailable,
}


def error_for(
    code: str, status: int, detail: str, request_id: str | None = None
) -> VaultCallFailed:
    """The typed exception for a vault problem code."""
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = VaultRejectedInput if 400 <= status < 500 else VaultCallFailed
    return cls(code, status, detail, request_id)
