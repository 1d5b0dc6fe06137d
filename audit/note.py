"""C2SP signed notes, tlog checkpoints and cosignatures, for the vault and the witness.

IN PCI SCOPE (as evidence). The parser and verifier live in the standalone evidence
verifier (`cofre_evidence_verifier.note`), so the code an auditor runs to check the
witnesses' cosignatures is the code the vault and the witness use; this module names
what the vault uses. Its errors are `audit.errors.NoteError` (the verifier's).
"""

from __future__ import annotations

from cofre_evidence_verifier.note import (
    ALG_COSIGNATURE_V1,
    ALG_ECDSA,
    ALG_ED25519,
    Checkpoint,
    CosignerKey,
    NoteSignature,
    Verified,
    VerifierKey,
    add_checkpoint_body,
    cosignature_message,
    ecdsa_verifier_key,
    open_note,
    parse_checkpoint,
    parse_note,
    parse_signature_lines,
    require_quorum,
    verify_note,
)

__all__ = [
    "ALG_COSIGNATURE_V1",
    "ALG_ECDSA",
    "ALG_ED25519",
    "Checkpoint",
    "CosignerKey",
    "NoteSignature",
    "Verified",
    "VerifierKey",
    "add_checkpoint_body",
    "cosignature_message",
    "ecdsa_verifier_key",
    "open_note",
    "parse_checkpoint",
    "parse_note",
    "parse_signature_lines",
    "require_quorum",
    "verify_note",
]
