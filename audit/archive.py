"""Shipping sealed segments of the audit log to object storage, and verifying the
archived chain.

IN PCI SCOPE. `archive_log` cuts the signed part of the log that is not archived yet
into sealed segments (`audit.segments`), each ending at a signed tree head and holding
at most `max_entries` leaves, uploads each with a manifest, and records it in
``audit_archive`` together with an ``audit.archive`` entry, in one transaction. It is
idempotent: a segment already recorded is never cut again, and one uploaded but not
recorded (a crash between the two) is found by its manifest and recorded.

Object layout under a prefix (both immutable once written, so a bucket with S3 Object
Lock keeps them)::

    <prefix>segments/<start>-<end>.jsonl.gz    the sealed segment
    <prefix>manifests/<start>-<end>.json       format, range, SHA-256, size, end head

`verify_archive` checks the chain incrementally: manifests contiguous from leaf 0 (or
from a trusted head kept from the last run) with no gap or overlap, each segment's
SHA-256, and each segment against the head that ended the one before it. The object
store is reached through `ObjectStore`; the S3 implementation lives in `infra_pci`.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Final, Protocol

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from audit.errors import ArchiveFailed, AuditVerificationFailed, AuditWriteFailed
from audit.heads import SignedTreeHead, verify_tree_head
from audit.log import AuditEvent, AuditLog, HexDigest, Outcome
from audit.schema import audit_archive, audit_heads
from audit.segments import (
    SEGMENT_FORMAT,
    SEGMENT_VERSION,
    SegmentSource,
    head_from_json,
    verify_segment,
    write_segment,
)
from audit.sequencer import load_compact_range
from audit.store import AuditStore, head_from_row
from cofre.dberrors import db_error_name

MANIFEST_FORMAT: Final = "cofre-audit-segment-manifest"
DEFAULT_MAX_ENTRIES: Final = 1_000_000
_RANGE: Final = re.compile(r"([0-9]+)-([0-9]+)\.json$")  # ASCII: int() reads other digits


class ObjectStore(Protocol):
    """Where segments go: a bucket, as the archive needs it. Implementations raise a
    `CofreError` when the store fails."""

    def put_file(self, key: str, source: IO[bytes]) -> None: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_file(self, key: str, out: IO[bytes]) -> bool:
        """Write the object to `out`; False when there is no such object."""
        ...

    def get_bytes(self, key: str) -> bytes | None: ...

    def list_keys(self, prefix: str) -> list[str]: ...


def normalize_prefix(prefix: str) -> str:
    """``""`` or the prefix ending in one ``/``."""
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def segment_key(prefix: str, start: int, end: int) -> str:
    return f"{normalize_prefix(prefix)}segments/{start}-{end}.jsonl.gz"


def manifest_key(prefix: str, start: int, end: int) -> str:
    return f"{normalize_prefix(prefix)}manifests/{start}-{end}.json"


@dataclass(frozen=True, slots=True)
class Manifest:
    """What the archive says of one segment."""

    start: int
    end: int
    object_key: str
    object_sha256: str
    object_bytes: int
    head: SignedTreeHead

    def as_json(self) -> dict[str, object]:
        return {
            "format": MANIFEST_FORMAT,
            "version": SEGMENT_VERSION,
            "segment_format": SEGMENT_FORMAT,
            "start": self.start,
            "end": self.end,
            "entries": self.end - self.start,
            "object_key": self.object_key,
            "object_sha256": self.object_sha256,
            "object_bytes": self.object_bytes,
            "head": self.head.as_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """Raises `ValueError` (or `KeyError`/`TypeError`) for a manifest of another
        format or version, or a malformed one."""
        if data.get("format") != MANIFEST_FORMAT or data.get("version") != SEGMENT_VERSION:
            raise ValueError(f"not a {MANIFEST_FORMAT} version {SEGMENT_VERSION}")
        manifest = cls(
            start=int(data["start"]),
            end=int(data["end"]),
            object_key=str(data["object_key"]),
            object_sha256=str(data["object_sha256"]),
            object_bytes=int(data["object_bytes"]),
            head=head_from_json(data["head"]),
        )
        if not 0 <= manifest.start < manifest.end or manifest.head.tree_size != manifest.end:
            raise ValueError("the range does not match its head")
        return manifest

    @property
    def name(self) -> str:
        return f"{self.start}-{self.end}"


@dataclass(frozen=True, slots=True)
class ArchivedSegment:
    start: int
    end: int
    object_key: str
    object_sha256: str
    object_bytes: int
    uploaded: bool  # False when the objects were already in the store


def _sha256_of(stream: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    stream.seek(0)
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    stream.seek(0)
    return digest.hexdigest(), size


def _choose_end(engine: Engine, start: int, max_entries: int) -> SignedTreeHead | None:
    """The head that ends the next segment: the largest at most `max_entries` past
    `start`, else the first beyond (heads are never further apart than the sequencer's
    signing interval); None when no head is past `start`. Two indexed lookups: the
    heads table holds one row per thousand entries or so, too many to load."""
    later = select(audit_heads).where(audit_heads.c.tree_size > start)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                later.where(audit_heads.c.tree_size <= start + max_entries)
                .order_by(audit_heads.c.tree_size.desc())
                .limit(1)
            ).first()
            if row is None:
                row = connection.execute(later.order_by(audit_heads.c.tree_size).limit(1)).first()
    except SQLAlchemyError as exc:
        raise ArchiveFailed(f"cannot read the signed heads ({db_error_name(exc)})") from None
    if row is None:
        return None
    return head_from_row(row)


def archive_log(
    engine: Engine,
    objects: ObjectStore,
    *,
    prefix: str = "",
    max_entries: int = DEFAULT_MAX_ENTRIES,
    actor: str = "cofre audit archive",
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[ArchivedSegment]:
    """Archive every signed leaf not archived yet, as sealed segments of at most about
    `max_entries` leaves; return the segments archived by this call (oldest first).

    Raises `ArchiveFailed` when the store or the database fails (what was recorded
    before stays recorded), `AuditVerificationFailed` when the stored log does not
    verify against its own heads (nothing of it is archived).
    """
    store = AuditStore(engine)
    done: list[ArchivedSegment] = []
    while True:
        start = _archived_end(engine)
        previous = store.head_at(start) if start else None
        if start and previous is None:
            raise ArchiveFailed(f"the archive ends at {start} but no signed head has that size")
        head = _choose_end(engine, start, max_entries)
        if head is None:
            return done
        source = _source(engine, store, previous, head, start)
        done.append(_ship(engine, objects, store, source, prefix=prefix, actor=actor, at=now()))


def _archived_end(engine: Engine) -> int:
    try:
        with engine.connect() as connection:
            end = connection.execute(
                select(audit_archive.c.segment_end)
                .order_by(audit_archive.c.segment_end.desc())
                .limit(1)
            ).scalar()
    except SQLAlchemyError as exc:
        raise ArchiveFailed(f"cannot read the archive records ({db_error_name(exc)})") from None
    return 0 if end is None else int(end)


def _source(
    engine: Engine,
    store: AuditStore,
    previous: SignedTreeHead | None,
    head: SignedTreeHead,
    start: int,
) -> SegmentSource:
    border: dict[int, bytes] = {}
    proof: list[bytes] = []
    if start:
        try:
            with engine.connect() as connection:
                tree = load_compact_range(connection, start)
        except AuditWriteFailed:
            raise AuditVerificationFailed(
                f"the stored tree lacks the border of signed tree head {start}", start
            ) from None
        border = tree.border()
        proof = store.consistency_proof(start, head.tree_size)
    origin = head.checkpoint.split("\n", 1)[0]
    return SegmentSource(origin, start, head.tree_size, previous, border, head, proof)


def _ship(
    engine: Engine,
    objects: ObjectStore,
    store: AuditStore,
    source: SegmentSource,
    *,
    prefix: str,
    actor: str,
    at: datetime,
) -> ArchivedSegment:
    key = segment_key(prefix, source.start, source.end)
    with tempfile.TemporaryFile() as packed:
        write_segment(packed, source, store.iter_entries(source.start, source.end))
        sha256, size = _sha256_of(packed)
        manifest = Manifest(source.start, source.end, key, sha256, size, source.head)
        mkey = manifest_key(prefix, source.start, source.end)
        existing = objects.get_bytes(mkey)
        uploaded = existing is None
        if existing is not None:
            try:
                same = Manifest.from_json(json.loads(existing)).object_sha256 == sha256
            except (ValueError, KeyError, TypeError):
                same = False
            if not same:
                raise ArchiveFailed(
                    f"the object store already holds a different manifest {mkey}: refusing to "
                    "overwrite an archived segment"
                )
        else:
            objects.put_file(key, packed)
            # The manifest last: a manifest always names a segment that was uploaded.
            body = json.dumps(manifest.as_json(), indent=2, sort_keys=True).encode()
            objects.put_bytes(mkey, body)
    _record(engine, manifest, actor, at)
    return ArchivedSegment(source.start, source.end, key, sha256, size, uploaded)


def _record(engine: Engine, manifest: Manifest, actor: str, at: datetime) -> None:
    event = AuditEvent(
        action="audit.archive",
        outcome=Outcome.SUCCESS,
        actor=actor,
        details={
            "start": manifest.start,
            "end": manifest.end,
            "object_key": manifest.object_key,
            # Computed here: kept exactly, never masked (`HexDigest`).
            "object_sha256": HexDigest(manifest.object_sha256),
        },
    )
    try:
        with engine.begin() as connection:
            connection.execute(
                insert(audit_archive).values(
                    segment_start=manifest.start,
                    segment_end=manifest.end,
                    object_key=manifest.object_key,
                    object_sha256=manifest.object_sha256,
                    object_bytes=manifest.object_bytes,
                    archived_at=at,
                )
            )
            AuditLog().append(connection, event)
    except IntegrityError:
        raise ArchiveFailed(
            f"segment {manifest.name} was recorded meanwhile: another `cofre audit archive` "
            "is running"
        ) from None
    except SQLAlchemyError as exc:
        raise ArchiveFailed(
            f"segment {manifest.name} was uploaded but could not be recorded "
            f"({db_error_name(exc)}); run `cofre audit archive` again"
        ) from None


# ------------------------------------------------------------------ verification
@dataclass(frozen=True, slots=True)
class ArchiveReport:
    segments: int
    downloaded: int
    entries: int
    last_head: SignedTreeHead | None


def read_manifests(objects: ObjectStore, prefix: str) -> list[Manifest]:
    """Every manifest under `prefix`, by start. Raises `AuditVerificationFailed` for a
    manifest that cannot be read."""
    found: list[Manifest] = []
    for key in objects.list_keys(f"{normalize_prefix(prefix)}manifests/"):
        if _RANGE.search(key) is None:
            continue
        body = objects.get_bytes(key)
        if body is None:
            raise AuditVerificationFailed(f"archived manifest {key} vanished while listed")
        try:
            found.append(Manifest.from_json(json.loads(body)))
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditVerificationFailed(
                f"archived manifest {key} is unreadable ({exc.__class__.__name__})"
            ) from None
    return sorted(found, key=lambda m: (m.start, m.end))


def _chain(manifests: list[Manifest], first: int, through: int | None) -> list[Manifest]:
    """The manifests from leaf `first` on (to the one ending at `through`), checked
    contiguous. Raises `AuditVerificationFailed` naming the gap or overlap."""
    chain: list[Manifest] = []
    expected = first
    for manifest in manifests:
        if manifest.end <= first:
            continue
        if manifest.start < expected:
            previous = chain[-1].name if chain else f"the trusted head {first}"
            raise AuditVerificationFailed(
                f"archived segment {manifest.name} overlaps {previous}", manifest.start
            )
        if manifest.start > expected:
            raise AuditVerificationFailed(
                f"no archived segment holds leaves {expected}..{manifest.start - 1}: a gap "
                f"before segment {manifest.name}",
                expected,
            )
        chain.append(manifest)
        expected = manifest.end
        if through is not None and expected >= through:
            break
    if through is not None and expected < through:
        raise AuditVerificationFailed(
            f"the archive ends at leaf {expected}, before {through}: segment "
            f"{expected}-... is missing",
            expected,
        )
    return chain


def verify_archive(
    objects: ObjectStore,
    prefix: str,
    public_key_pem: bytes,
    *,
    trusted: SignedTreeHead | None = None,
    download_from: int = 0,
    through: int | None = None,
) -> ArchiveReport:
    """Verify the archived chain from leaf 0 (or from the `trusted` head, e.g. the last
    head verified by a previous run) to its end (or to leaf `through`); return what was
    checked. Segments that end at or before `download_from` are checked by their
    manifests only (continuity, head signature, link to the next segment).

    Raises `AuditVerificationFailed` naming the first segment that is missing, altered,
    out of place or does not verify.
    """
    first = 0 if trusted is None else trusted.tree_size
    chain = _chain(read_manifests(objects, prefix), first, through)
    previous = trusted
    downloaded = 0
    for manifest in chain:
        if manifest.end <= download_from:
            try:
                verify_tree_head(manifest.head, public_key_pem)
            except AuditVerificationFailed as exc:
                raise AuditVerificationFailed(
                    f"archived segment {manifest.name}: {exc}", manifest.start
                ) from None
            previous = manifest.head
            continue
        previous = _verify_object(objects, manifest, previous, public_key_pem)
        downloaded += 1
    entries = (chain[-1].end - first) if chain else 0
    return ArchiveReport(len(chain), downloaded, entries, previous)


def _verify_object(
    objects: ObjectStore, manifest: Manifest, previous: SignedTreeHead | None, pem: bytes
) -> SignedTreeHead:
    with tempfile.TemporaryFile() as packed:
        if not objects.get_file(manifest.object_key, packed):
            raise AuditVerificationFailed(
                f"archived segment {manifest.name} is missing: no object {manifest.object_key}",
                manifest.start,
            )
        sha256, _size = _sha256_of(packed)
        if sha256 != manifest.object_sha256:
            raise AuditVerificationFailed(
                f"archived segment {manifest.name} was altered: its SHA-256 is not the manifest's",
                manifest.start,
            )
        head = verify_segment(
            packed,
            manifest.name,
            start=manifest.start,
            end=manifest.end,
            previous_head=previous,
            public_key_pem=pem,
        )
    if head != manifest.head:
        raise AuditVerificationFailed(
            f"archived segment {manifest.name}: its head is not the manifest's", manifest.start
        )
    return head
