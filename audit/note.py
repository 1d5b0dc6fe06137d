"""C2SP signed notes, tlog checkpoints and cosignatures, for the vault and the witness.

IN PCI SCOPE (as evidence). The parser and verifier live in the standalone evidence
verifier (`cofre_evidence_verifier.note`), so the code an auditor runs to check the
witnesses' cosignatures is the code the vault and the witness use; this module names
what the vault uses, with the audit key's handover checkpoints (`keychain`). Its errors
are `audit.errors.NoteError` (the verifier's).
"""

from __future__ import annotations

from cofre_evidence_verifier.keychain import (
    HANDOVER_EXTENSION,
    Handover,
    KeyChain,
    handover_note,
    handover_text,
    parse_handover,
)
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
    minority_quorum,
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
    "HANDOVER_EXTENSION",
    "Checkpoint",
    "CosignerKey",
    "Handover",
    "KeyChain",
    "NoteSignature",
    "Verified",
    "VerifierKey",
    "add_checkpoint_body",
    "cosignature_message",
    "ecdsa_verifier_key",
    "handover_note",
    "handover_text",
    "minority_quorum",
    "open_note",
    "parse_checkpoint",
    "parse_handover",
    "parse_note",
    "parse_signature_lines",
    "require_quorum",
    "verify_note",
]
