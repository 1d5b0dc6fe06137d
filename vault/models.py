"""The vault's request and answer types: who calls, what they ask, what they get.

IN PCI SCOPE, holds card data (a `TokenizeRequest` carries a `Pan`; answers never do).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from vault.pan import Pan


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who is calling (the SAN URI of the verified client certificate) and the request."""

    identity: str
    request_id: str


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token and what may be said about it; never the PAN."""

    token: str
    token_id: str
    format: str
    created_at: datetime
    expires_at: datetime | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    existing: bool = False


@dataclass(frozen=True, slots=True)
class Revealed:
    """A detokenize answer: the PAN when the caller's policy reveals it in full, else
    only the masked form."""

    token: str
    masked: str
    pan: Pan | None


@dataclass(frozen=True, slots=True)
class TokenizeRequest:
    pan: Pan
    format: str
    metadata: Mapping[str, str] | None = None
    ttl_seconds: int | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class AuditInclusionProof:
    """Entry `index` of the audit log (its canonical JSON), its RFC 9162 leaf hash and
    the inclusion proof of that leaf in the tree of `tree_size` entries."""

    index: int
    tree_size: int
    entry: str
    leaf_hash: bytes
    proof: list[bytes]


@dataclass(frozen=True, slots=True)
class AuditConsistencyProof:
    """The RFC 9162 consistency proof between the audit log's trees of `size1` and
    `size2` entries."""

    size1: int
    size2: int
    proof: list[bytes]


MAX_BATCH: Final = 1000
