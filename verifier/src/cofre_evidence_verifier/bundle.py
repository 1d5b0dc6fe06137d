"""Reading an evidence bundle: the format's names, the archive, its JSON and signatures.

A bundle is a gzip-compressed tar (`cofre-evidence/1`): the files its signed
`manifest.json` lists with their sizes and SHA-256, plus the manifest and its signature
`manifest.sig` (ECDSA P-256 with SHA-256, or Ed25519, by the vault's audit key).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from cofre_evidence_verifier.errors import UnsafeBundle

if TYPE_CHECKING:
    from cofre_evidence_verifier.report import Report

BUNDLE_FORMAT: Final = "cofre-evidence/1"
MANIFEST: Final = "manifest.json"
SIGNATURE: Final = "manifest.sig"
MAX_FILE: Final = 512 * 1024 * 1024
# The audit actions that record the policy put in force (with its SHA-256 and text).
POLICY_ACTIONS: Final = ("policy.load", "policy.reload")

Files = dict[str, bytes]
Heads = dict[int, dict[str, Any]]


def read_bundle(path: Path) -> Files:
    """Return the bundle's regular files by name.

    Raises `UnsafeBundle` for links, devices, absolute paths, '..', an oversized or an
    unreadable member (the file comes from outside), `OSError` or `tarfile.TarError` for
    a file that is not a readable tar.gz.
    """
    files: Files = {}
    with tarfile.open(path, "r:gz") as archive:
        for member in archive.getmembers():
            name = member.name
            if member.isdir():
                continue
            if not member.isfile() or name.startswith("/") or ".." in Path(name).parts:
                raise UnsafeBundle(f"unsafe member in bundle: {name!r}")
            if member.size > MAX_FILE:
                raise UnsafeBundle(f"member too large: {name!r}")
            handle = archive.extractfile(member)
            if handle is None:
                raise UnsafeBundle(f"unreadable member: {name!r}")
            files[name] = handle.read()
    return files


def signature_verifies(public_key_pem: bytes, signature: bytes, message: bytes) -> bool:
    """Whether `signature` over `message` verifies with the PEM public key (ECDSA with
    SHA-256 or Ed25519; any other key type does not verify)."""
    public = serialization.load_pem_public_key(public_key_pem)
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, message)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def json_lines(data: bytes, name: str = "", report: Report | None = None) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a malformed line is reported (when a
    `report` is given) and skipped."""
    out = []
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if isinstance(value, dict):
            out.append(value)
        elif report is not None:
            report.fail(f"{name}: line {number} is not a JSON object")
    return out
