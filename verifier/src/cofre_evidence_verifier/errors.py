"""Errors of the offline evidence verifier.

It cannot import the vault's `cofre.errors.CofreError` (it stands alone), so its errors
have a root of their own. Both are also `ValueError`: a bad bundle is bad input.

    VerifierError
    ├── ProofError      (also ValueError)  a Merkle proof or tree does not verify
    ├── NoteError       (also ValueError)  a signed note, checkpoint, vkey or
    │                                      cosignature is malformed or does not verify
    ├── SignedRequestError (also ValueError)  an officer's signed request (a key
    │                                      ceremony action) is unreadable or does not
    │                                      verify
    ├── UnsafeBundle    (also ValueError)  the archive cannot be read safely
    └── MalformedBundle (also ValueError)  a file of the bundle holds a value of the
                                           wrong type or shape
"""

from __future__ import annotations


class VerifierError(Exception):
    """Root of the verifier's errors."""


class ProofError(VerifierError, ValueError):
    """A Merkle inclusion or consistency proof, or a rebuilt root, does not verify."""


class NoteError(VerifierError, ValueError):
    """A signed note, checkpoint, verifier key or cosignature is malformed or does not
    verify (c2sp.org/signed-note, tlog-checkpoint, tlog-cosignature)."""


class SignedRequestError(VerifierError, ValueError):
    """An officer's signed request, stored with a key ceremony's proposal or approval,
    is not readable or its RFC 9421 signature does not verify (`request_signature`)."""


class UnsafeBundle(VerifierError, ValueError):
    """The bundle holds a link, a device, an absolute or `..` path, an oversized or an
    unreadable member, or any tar construct other than the exporter's plain ustar files
    (review 35): it is refused before anything in it is used."""


class MalformedBundle(VerifierError, ValueError):
    """A file of the bundle holds JSON the verifier does not follow (too deep, NaN or
    Infinity), or a value of the wrong type where a check reads it."""
