"""The vault's request and answer types: who calls, what they ask, what they get.

IN PCI SCOPE, holds card data (a `TokenizeRequest` carries a `Pan`; answers never do).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Generic, TypeVar

from audit.log import Source
from vault.card import SecurityCode
from vault.pan import Pan

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who is calling (the SAN URI of the verified client certificate) and the request;
    `source`, where it came from (the peer's address and certificate fingerprint), goes
    to every audit entry of the call (PCI DSS 10.2.2; None for the CLI's own calls)."""

    identity: str
    request_id: str
    source: Source | None = None


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
    only the masked form (BIN6 and last four).

    `expiry` (``YYYY-MM``) is answered at both levels when the token carries one: with
    the masked number it identifies a card to its holder without being card data one
    can pay with. `cardholder_name` only in full; a masked answer never carries it (a
    name beside BIN6 and last four says whose card it is). A security code is never in
    any answer."""

    token: str
    masked: str
    pan: Pan | None
    expiry: str | None = None
    cardholder_name: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class TokenizeRequest:
    """What to tokenize. Beside the PAN, optional card details (`vault.card`):

    - `expiry`: ``MM/YY`` or ``YYYY-MM``, stored as ``YYYY-MM``; an expired card is
      refused (`CardExpired`, 422 ``card_expired``);
    - `cardholder_name`: normalised (NFC, single spaces, at most 64 characters, no digit
      runs); blank is the same as absent;
    - `security_code`: held once for the next relay call, never revealed; refused
      (`SecurityCodeForbidden`) on a format whose ``security_code = "forbid"``.

    The PAN, expiry and name are sealed together in one AEAD payload bound to the token
    row. On a convergent or idempotent answer (the card already has a token) a new
    expiry or name replaces the stored one, and a code is held for that token."""

    pan: Pan
    format: str
    metadata: Mapping[str, str] | None = None
    ttl_seconds: int | None = None
    idempotency_key: str | None = None
    expiry: str | None = None
    cardholder_name: str | None = field(default=None, repr=False)
    security_code: SecurityCode | None = None


@dataclass(frozen=True, slots=True)
class TokenUpdate:
    """What to change on a stored token (`VaultService.update`); never its PAN nor a
    security code. Each part left at its default leaves that part as it is:

    - `metadata`: replaces the token's metadata (checked as tokenize checks it);
    - `ttl_seconds` with `sets_ttl`: the token expires `ttl_seconds` from the update;
      `ttl_seconds` None makes it permanent (tokenize's default without a TTL);
    - `expiry`, `cardholder_name`: replace the sealed card details, checked and
      normalised as tokenize does (a blank name is the same as none: it changes
      nothing)."""

    metadata: Mapping[str, str] | None = None
    ttl_seconds: int | None = None
    sets_ttl: bool = False
    expiry: str | None = None
    cardholder_name: str | None = field(default=None, repr=False)


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

# The most tokens one lookup answers (review 46): a card under a format that issues a
# new token on every call (``dedup = "random"``) may have any number, and one lookup
# answered, decrypted and audited them all for one unit of the rate limit (20,000 in
# 2.3 s). Basis Theory's token search pages at most 100 a request too.
MAX_LOOKUP_TOKENS: Final = 100


@dataclass(frozen=True, slots=True)
class LookupAnswer:
    """A lookup's answer: the card's oldest live tokens (at most `MAX_LOOKUP_TOKENS`) and
    whether it has more."""

    tokens: list[TokenRecord]
    truncated: bool


@dataclass(frozen=True, slots=True)
class Pending(Generic[T]):
    """An operation handed to the group committer, not yet answered (issue 21: an
    `async` caller waits for `committed` on its event loop instead of parking a thread
    for the commit).

    `committed` is done once the operation's first transaction committed or failed.
    Then `answer()` is the operation's answer if that transaction simply succeeded,
    without blocking; else None, and `finish()` (which blocks: call it in a thread)
    answers or raises exactly what the synchronous call would, after writing a
    refusal's audit entry or retrying a unique-key race. `finish()` may be called at
    any time: it waits for `committed` itself."""

    committed: Future[Any]
    quick: Callable[[Any], T | None]
    finish: Callable[[], T]

    def answer(self) -> T | None:
        if not self.committed.done() or self.committed.exception() is not None:
            return None
        return self.quick(self.committed.result())
