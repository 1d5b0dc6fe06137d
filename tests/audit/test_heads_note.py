"""The vault's tree heads are C2SP checkpoints signed as type-0x02 notes."""

from __future__ import annotations

from audit.heads import checkpoint_text, head_note, log_verifier_key, sign_tree_head
from audit.note import VerifierKey, open_note, parse_checkpoint
from tests.support.signers import SoftSigner


def test_vault_heads_are_tlog_checkpoints_signed_as_type_2_notes() -> None:
    signer = SoftSigner()
    head = sign_tree_head(signer, "cofre", 8, b"\x07" * 32, 1_700_000_000_000)
    assert head.checkpoint == checkpoint_text("cofre", 8, b"\x07" * 32, 0)
    assert parse_checkpoint(head.checkpoint).origin == "cofre-audit/cofre"
    vkey = log_verifier_key(head, signer.public_key_pem())
    reparsed = VerifierKey.parse(vkey.encode())  # the key ID is SHA-256(SPKI)[:4]
    text, verified = open_note(head_note(head, signer.public_key_pem()), [reparsed])
    assert text == head.checkpoint
    assert verified[0].timestamp is None
