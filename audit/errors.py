"""Errors of the audit package.

IN PCI SCOPE.

    CofreError
    └── AuditError
        ├── ProofError          (also ValueError)  a Merkle proof does not verify
        ├── AuditWriteFailed                       code audit_unavailable (fail closed)
        ├── WitnessRefused                         code witness_refused (no cosignature)
        │   └── InvalidCosignature                 code witness_cosignature_invalid
        ├── AuditReadFailed                        code audit_read_unavailable
        ├── AuditVerificationFailed                the stored log does not match its heads
        ├── ArchiveFailed                          a segment could not be archived
        └── RetentionRefused                       a partition may not be dropped (yet)
"""

from __future__ import annotations

from cofre.errors import CofreError
from cofre_evidence_verifier.errors import NoteError

# `NoteError` (a signed note, checkpoint, vkey or cosignature is bad) is the standalone
# verifier's: the note parser lives there so auditors run the same code (audit.note).
__all__ = [
    "AuditError",
    "AuditReadFailed",
    "AuditVerificationFailed",
    "AuditWriteFailed",
    "InvalidCosignature",
    "NoteError",
    "ProofError",
    "WitnessRefused",
]


class AuditError(CofreError):
    code = "audit_error"


class ProofError(AuditError, ValueError):
    code = "proof_invalid"


class AuditWriteFailed(AuditError):
    code = "audit_unavailable"


class WitnessRefused(AuditError):
    """A witness gave no cosignature of a head: it refused, or its answer was not one
    (`audit.publisher` retries; nothing waits on it)."""

    code = "witness_refused"


class InvalidCosignature(WitnessRefused):
    """A witness answered 200 without a cosignature of the head that verifies under its
    pinned key (a wrong key, a mangled or absent signature line)."""

    code = "witness_cosignature_invalid"


class AuditReadFailed(AuditError):
    """The audit log could not be read (the database is down or refused the query)."""

    code = "audit_read_unavailable"


class AuditVerificationFailed(AuditError):
    """The stored log differs from what was signed. `index` is the first leaf index
    known to be affected, when one can be named."""

    code = "audit_verification_failed"

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class ArchiveFailed(AuditError):
    """A segment could not be written to or read from the object store, or recorded."""

    code = "audit_archive_failed"


class RetentionRefused(AuditError):
    """An online partition may not be dropped: not all of it is sequenced, archived and
    verified in the archive."""

    code = "audit_retention_refused"
