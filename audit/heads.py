"""Signed tree heads: checkpoints in the C2SP tlog-checkpoint format, signed notes.

IN PCI SCOPE. A tree head is the checkpoint text (c2sp.org/tlog-checkpoint)::

    cofre-audit/<log id>
    <tree size>
    <base64 of the 32-byte root hash>

signed by the HSM's audit key, ECDSA P-256 over SHA-256 (DER). As a signed note
(c2sp.org/signed-note) the signature line is ``— <origin> base64(key ID || DER)``
with signature type 0x02, "ECDSA as implemented by transparency-dev/witness": the key ID
is the first four bytes of SHA-256 of the key's SPKI DER (`audit.note`). So any
transparency-dev witness, Go's ``note.Open`` with transparency-dev/formats' verifier, or
openssl alone (``openssl dgst -sha256 -verify audit.pem -signature head.sig
checkpoint.txt``) can check a head. Heads signed before witnessing began carry a fourth
line, ``time <RFC 3339>``: a checkpoint extension line, still valid, no longer written
(the spec advises against extension lines; the witnesses' cosignatures carry the time).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from audit.errors import AuditVerificationFailed
from audit.note import Checkpoint, NoteSignature, VerifierKey, ecdsa_verifier_key


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

    @property
    def origin(self) -> str:
        """The checkpoint's origin line (the log's identity)."""
        return self.checkpoint.split("\n", 1)[0]

    def as_json(self) -> dict[str, object]:
        return {
            "tree_size": self.tree_size,
            "root_hash": base64.b64encode(self.root_hash).decode(),
            "timestamp_ms": self.timestamp_ms,
            "key_id": self.key_id,
            "checkpoint": self.checkpoint,
            "signature": base64.b64encode(self.signature).decode(),
        }


def log_origin(log_id: str) -> str:
    """Return the checkpoint origin (and note key name) of the audit log `log_id`."""
    return f"cofre-audit/{log_id}"


def checkpoint_text(log_id: str, tree_size: int, root: bytes, timestamp_ms: int) -> str:
    """Return the exact text that is signed for a tree head: the tlog-checkpoint note
    text, with no extension line (`timestamp_ms` is kept beside it, unsigned)."""
    del timestamp_ms  # the cosignatures' timestamps are the witnessed times
    return Checkpoint(log_origin(log_id), tree_size, root).text()


def log_verifier_key(head_or_origin: SignedTreeHead | str, public_key_pem: bytes) -> VerifierKey:
    """Return the note verifier key (type 0x02 vkey) of the audit key for this log: what
    a witness operator pins for the vault."""
    origin = head_or_origin if isinstance(head_or_origin, str) else head_or_origin.origin
    return ecdsa_verifier_key(origin, public_key_pem)


def head_note(head: SignedTreeHead, public_key_pem: bytes) -> str:
    """Return `head` as a signed note: its checkpoint text, a blank line, and the vault's
    signature line (add the witnesses' cosignature lines after it)."""
    key = log_verifier_key(head, public_key_pem)
    return head.checkpoint + "\n" + NoteSignature(key.name, key.key_id, head.signature).line()


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
