"""One checked tokenize item (`_Item`) and what the oracle guard counts for it: the
pieces of `vault.operations.tokenize` that planning an item needs, kept apart so that
module stays readable in one sitting.

IN PCI SCOPE: an item holds the card.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.formats import (
    MIN_CANDIDATES,
    FormatSpec,
    FormatType,
    hidden_candidates,
    may_converge,
)
from vault.card import CardBundle
from vault.models import TokenizeRequest


def _guard_kind(spec: FormatSpec, request: TokenizeRequest) -> str | None:
    """What the oracle guard counts for this item: ``"card"`` (the card, when the answer
    depends on what the vault holds: convergence or an idempotency key), ``"token"``
    (each fresh token of a small random space, which it uses up), or None."""
    length = len(request.pan)
    if may_converge(spec, length) or request.idempotency_key is not None:
        return "card"
    if spec.type is FormatType.RANDOM and hidden_candidates(spec, length) < MIN_CANDIDATES:
        return "token"
    return None


@dataclass(slots=True)
class _Item:
    """One checked tokenize item and what storing it needs (fingerprints: see _tokenize)."""

    request: TokenizeRequest
    spec: FormatSpec
    card: CardBundle  # what is sealed: the PAN and its details
    code_epoch: int | None  # the key epoch of its security code, if it brings one
    metadata: str
    convergent: bool  # this call may answer a stored token for the same PAN
    fingerprint: bytes
    fp_version: int
    known_fps: list[bytes]
    guard: tuple[bytes, bytes] | None  # (oracle bucket, item) when the guard counts it
    guards_card: bool  # the guard's item is the card's fingerprint
