"""The vault service: tokenize, detokenize, lookup, metadata, delete, batches, relay,
purge, update. A small facade over one module per operation (`vault/operations/`).

IN PCI SCOPE, holds card data. The only code that turns a `Pan` into stored ciphertext
and back. Every public method authorises, works and audits in one transaction, and fails
closed (the contract is spelled out in `vault/_core.py`).

Where each operation lives: `vault/operations/tokenize.py` (tokenize, batches, domains,
convergence, the oracle guard), `capture.py` (hosted capture sessions), `reveal.py`
(detokenize, masked, batches), `lookup.py` (lookup, metadata), `relay.py`, `delete.py`
(delete, purge), `update.py` (a token's metadata, life and card details),
`audit_access.py`; what they share (transaction, audit, authorisation, limits,
fingerprints) is in `vault/_core.py`.
"""

from __future__ import annotations

# The audit entry a caller hands to `VaultService.record`, and the context that tells it
# whether an operation already wrote one: part of the facade, so the API (api -> vault,
# policies) needs no import of the audit package.
from audit.log import (
    AuditEvent,
    DetailValue,
    HexDigest,
    Outcome,
    Source,
    refusal_sieve,
    request_source,
    request_trail,
)
from vault._named_refusals import names_token, naming_token
from vault.models import (
    MAX_BATCH,
    MAX_LOOKUP_TOKENS,
    CallContext,
    LookupAnswer,
    Revealed,
    TokenizeRequest,
    TokenRecord,
    TokenUpdate,
)
from vault.operations._inputs import validate_metadata
from vault.operations.audit_access import AuditAccessOperations
from vault.operations.capture import CaptureOperations
from vault.operations.codes import SecurityCodeOperations
from vault.operations.delete import DeleteOperations
from vault.operations.lookup import LookupOperations
from vault.operations.relay import RelayOperations
from vault.operations.reveal import RevealOperations
from vault.operations.update import UpdateOperations

__all__ = [
    "MAX_BATCH",
    "MAX_LOOKUP_TOKENS",
    "AuditEvent",
    "CallContext",
    "DetailValue",
    "HexDigest",
    "LookupAnswer",
    "Outcome",
    "Revealed",
    "Source",
    "TokenRecord",
    "TokenUpdate",
    "TokenizeRequest",
    "VaultService",
    "names_token",
    "naming_token",
    "refusal_sieve",
    "request_source",
    "request_trail",
    "validate_metadata",
]


class VaultService(
    CaptureOperations,
    RelayOperations,
    RevealOperations,
    LookupOperations,
    DeleteOperations,
    UpdateOperations,
    AuditAccessOperations,
    SecurityCodeOperations,
):
    """The vault's operations for one database, HSM and policy."""
