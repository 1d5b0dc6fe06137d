"""An ECDSA P-256 audit signer in software, standing in for the HSM key where a test
needs keys of its own (a rogue key, or an old and a new key without a ceremony):
tests/vault/test_audit_rotation.py runs the real ceremony with the HSM."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


class SoftSigner:
    """The signer interface the audit heads use (`key_id`, `sign`, `public_key_pem`)."""

    def __init__(self, label: str = "test") -> None:
        self.key_id = label
        self._private = ec.generate_private_key(ec.SECP256R1())

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message, ec.ECDSA(hashes.SHA256()))

    def public_key_pem(self) -> bytes:
        return self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
