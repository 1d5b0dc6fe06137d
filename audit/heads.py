"""Signed tree heads: the checkpoint text that is signed, and its verification.

IN PCI SCOPE. A tree head is signed as a small text "checkpoint" in the spirit of the
C2SP tlog-checkpoint format, so an auditor can check it with openssl alone::

    cofre-audit/<log id>
    <tree size>
    <base64 of the 32-byte root hash>
    time <RFC 3339 UTC, milliseconds>

The signature is ECDSA P-256 over SHA-256 of those bytes (DER), made by the HSM's audit
key: ``openssl dgst -sha256 -verify audit.pem -signature head.sig checkpoint.txt``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from audit.errors import AuditVerificationFailed


class TreeHeadSigner(Protocol):
    """Signs checkpoints. The wiring adapts the HSM's audit key to this."""

    @property
    def key_id(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...

    def public_key_pem(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class SignedTreeHead:
    tree_size: int
    root_hash: bytes
    timestamp_ms: int
    key_id: str
    checkpoint: str
    signature: bytes

    def as_json(self) -> dict[str, object]:
        return {
            "tree_size": self.tree_size,
            "root_hash": base64.b64encode(self.root_hash).decode(),
            "timestamp_ms": self.timestamp_ms,
            "key_id": self.key_id,
            "checkpoint": self.checkpoint,
            "signature": base64.b64encode(self.signature).decode(),
        }


def checkpoint_text(log_id: str, tree_size: int, root: bytes, timestamp_ms: int) -> str:
    """Return the exact text that is signed for a tree head."""
    # The time is spelled out rather than as epoch milliseconds: a 13-digit number is
    # the shape of a card number, and scanners for leaked PANs rightly flag it.
    at = datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds")
    return (
        f"cofre-audit/{log_id}\n{tree_size}\n{base64.b64encode(root).decode()}\n"
        f"time {at.replace('+00:00', 'Z')}\n"
    )


def sign_tree_head(
    signer: TreeHeadSigner, log_id: str, tree_size: int, root: bytes, timestamp_ms: int
) -> SignedTreeHead:
    """Return the head (`tree_size`, `root`, `timestamp_ms`) signed by `signer`."""
    text = checkpoint_text(log_id, tree_size, root, timestamp_ms)
    return SignedTreeHead(
        tree_size=tree_size,
        root_hash=root,
        timestamp_ms=timestamp_ms,
        key_id=signer.key_id,
        checkpoint=text,
        signature=signer.sign(text.encode()),
    )


def verify_tree_head(head: SignedTreeHead, public_key_pem: bytes) -> None:
    """Return if `head`'s signature verifies under the PEM public key and its checkpoint
    text states its own size and root. Raises `AuditVerificationFailed` otherwise."""
    lines = head.checkpoint.split("\n")
    if (
        len(lines) < 4
        or lines[1] != str(head.tree_size)
        or (lines[2] != base64.b64encode(head.root_hash).decode())
    ):
        raise AuditVerificationFailed(
            f"tree head {head.tree_size}: the checkpoint text does not match its size and root"
        )
    public = serialization.load_pem_public_key(public_key_pem)
    message = head.checkpoint.encode()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(head.signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(head.signature, message)
        else:
            raise AuditVerificationFailed("unsupported audit public key type")
    except InvalidSignature:
        raise AuditVerificationFailed(
            f"tree head {head.tree_size}: the signature does not verify with this public key"
        ) from None
