"""Reading entries back out of the archive: the payloads of given leaves, from the
sealed segments in the object store, for a log whose partitions retention dropped.

IN PCI SCOPE (as evidence). What is read here is only a candidate: whoever uses it
proves it against a signed head (the evidence bundle carries each with its inclusion
proof, `compliance._carried`), so a segment altered in the bucket yields an entry that
does not verify, never a trusted one. The segment's SHA-256 is still compared with its
manifest's, so an altered object is named here rather than later.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import tempfile
from collections.abc import Collection

from audit.archive import Manifest, ObjectStore, read_manifests
from audit.errors import AuditVerificationFailed


def archived_payloads(objects: ObjectStore, prefix: str, wanted: Collection[int]) -> dict[int, str]:
    """The canonical JSON of each leaf of `wanted` that an archived segment under
    `prefix` holds, by leaf index (a leaf no segment holds is left out). Only the
    segments holding a wanted leaf are downloaded.

    Raises `AuditVerificationFailed` for a manifest or segment that cannot be read or
    whose SHA-256 is not its manifest's, and what the store raises when it fails.
    """
    leaves = set(wanted)
    found: dict[int, str] = {}
    for manifest in read_manifests(objects, prefix):
        inside = {i for i in leaves if manifest.start <= i < manifest.end}
        if inside:
            found |= _read_segment(objects, manifest, inside)
    return found


def _read_segment(objects: ObjectStore, manifest: Manifest, inside: set[int]) -> dict[int, str]:
    with tempfile.TemporaryFile() as packed:
        if not objects.get_file(manifest.object_key, packed):
            raise AuditVerificationFailed(
                f"archived segment {manifest.name} is missing: no object {manifest.object_key}",
                manifest.start,
            )
        digest = hashlib.sha256()
        while chunk := packed.read(1 << 20):
            digest.update(chunk)
        if digest.hexdigest() != manifest.object_sha256:
            raise AuditVerificationFailed(
                f"archived segment {manifest.name} was altered: its SHA-256 is not the manifest's",
                manifest.start,
            )
        packed.seek(0)
        found: dict[int, str] = {}
        try:
            with gzip.GzipFile(fileobj=packed, mode="rb") as lines:
                for raw in lines:
                    record = json.loads(raw)
                    index, payload = record.get("index"), record.get("payload")
                    if record.get("type") == "entry" and index in inside:
                        found[int(index)] = str(payload)
        except (ValueError, OSError, EOFError, AttributeError) as exc:
            raise AuditVerificationFailed(
                f"archived segment {manifest.name}: unreadable ({type(exc).__name__})",
                manifest.start,
            ) from None
    return found
