"""The vault's tree heads are C2SP checkpoints signed as type-0x02 notes."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from audit.heads import checkpoint_text, head_note, log_verifier_key, sign_tree_head
from audit.note import VerifierKey, open_note, parse_checkpoint


class _SoftSigner:
    """An ECDSA P-256 signer in software, standing in for the HSM key in a unit test."""

    key_id = "test"

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message, ec.ECDSA(hashes.SHA256()))

    def public_key_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def test_vault_heads_are_tlog_checkpoints_signed_as_type_2_notes() -> None:
    signer = _SoftSigner()
    head = sign_tree_head(signer, "cofre", 8, b"\x07" * 32, 1_700_000_000_000)
    assert head.checkpoint == checkpoint_text("cofre", 8, b"\x07" * 32, 0)
    assert parse_checkpoint(head.checkpoint).origin == "cofre-audit/cofre"
    vkey = log_verifier_key(head, signer.public_key_pem())
    reparsed = VerifierKey.parse(vkey.encode())  # the key ID is SHA-256(SPKI)[:4]
    text, verified = open_note(head_note(head, signer.public_key_pem()), [reparsed])
    assert text == head.checkpoint
    assert verified[0].timestamp is None
