"""Sealed segments shipped to S3 (moto's in-process S3, no AWS) and the archived chain
verified incrementally; tampering with any segment or manifest is named."""

from __future__ import annotations

import gzip
import hashlib
import json
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine

from audit.archive import (
    archive_log,
    manifest_key,
    read_manifests,
    segment_key,
    verify_archive,
)
from audit.errors import ArchiveFailed, AuditVerificationFailed
from audit.log import AuditEvent, AuditLog, Outcome
from audit.sequencer import Sequencer
from audit.store import AuditStore
from infra_pci.objectstore import S3ObjectStore
from tests.audit.conftest import BUCKET
from vault.signing import HSMTreeHeadSigner

PREFIX = "prod/audit"


def append(engine: Engine, count: int, action: str = "tokenize") -> None:
    log = AuditLog()
    with engine.begin() as connection:
        for i in range(count):
            log.append(
                connection,
                AuditEvent(action=action, outcome=Outcome.SUCCESS, actor="svc", token_id=f"t{i}"),
            )


def sequence(engine: Engine, signer: HSMTreeHeadSigner, every: int = 8) -> None:
    """Integrate everything queued, signing a head every `every` leaves and at the end."""
    sequencer = Sequencer(engine, signer, sign_every_entries=every, sign_every_seconds=3600)
    while sequencer.run_once(batch=every, force_sign=True):
        pass


def _archive_actions(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        payloads = connection.execute(
            sa.text("SELECT payload FROM audit_entries ORDER BY id")
        ).scalars()
        return [p for p in map(json.loads, payloads) if p["action"] == "audit.archive"]


def test_archive_is_idempotent_and_verifies_incrementally(
    engine: Engine, signer: HSMTreeHeadSigner, s3: S3ObjectStore
) -> None:
    pem = signer.public_key_pem()
    append(engine, 40)
    sequence(engine, signer)
    first = archive_log(engine, s3, prefix=PREFIX, max_entries=16)
    assert [(s.start, s.end) for s in first] == [(0, 16), (16, 32), (32, 40)]
    assert all(s.uploaded for s in first)
    assert archive_log(engine, s3, prefix=PREFIX, max_entries=16) == []
    assert [(a["details"]["start"], a["details"]["end"]) for a in _archive_actions(engine)] == [
        (0, 16),
        (16, 32),
        (32, 40),
    ]
    report = verify_archive(s3, PREFIX, pem)
    assert (report.segments, report.downloaded, report.entries) == (3, 3, 40)
    kept = report.last_head
    assert kept is not None
    assert kept.tree_size == 40

    # The archive entries themselves are logged, sequenced and archived next time.
    append(engine, 5)
    sequence(engine, signer)
    later = archive_log(engine, s3, prefix=PREFIX, max_entries=16)
    assert [(s.start, s.end) for s in later] == [(40, 48)]
    incremental = verify_archive(s3, PREFIX, pem, trusted=kept)
    assert (incremental.segments, incremental.downloaded, incremental.entries) == (1, 1, 8)
    assert verify_archive(s3, PREFIX, pem).entries == 48
    online = AuditStore(engine).verify(pem)
    assert (online.entries, online.queued) == (48, 1)  # the last archive entry is queued


def test_segment_format_is_documented_json_lines(
    engine: Engine, signer: HSMTreeHeadSigner, s3: S3ObjectStore
) -> None:
    append(engine, 20)
    sequence(engine, signer)
    archive_log(engine, s3, prefix=PREFIX, max_entries=8)
    body = s3.get_bytes(segment_key(PREFIX, 8, 16))
    assert body is not None
    lines = [json.loads(line) for line in gzip.decompress(body).splitlines()]
    assert [line["type"] for line in lines] == [
        "segment",
        "previous_head",
        "border",
        *["entry"] * 8,
        "head",
        "consistency",
    ]
    assert lines[0] == {
        "type": "segment",
        "format": "cofre-audit-segment",
        "version": 1,
        "log_id": "cofre-audit/cofre",
        "start": 8,
        "end": 16,
    }
    stored = AuditStore(engine).head_at(16)
    assert stored is not None
    assert {k: v for k, v in lines[-2].items() if k != "type"} == stored.as_json()
    manifest = json.loads(s3.get_bytes(manifest_key(PREFIX, 8, 16)) or b"")
    assert manifest["format"] == "cofre-audit-segment-manifest"
    assert manifest["object_key"] == "prod/audit/segments/8-16.jsonl.gz"
    assert manifest["entries"] == 8
    # No time or name in the gzip header: the same segment always has the same bytes.
    assert body[4:8] == b"\x00\x00\x00\x00"


def _tamper_entry(s3: S3ObjectStore, key: str, *, fix_manifest: str | None) -> None:
    body = s3.get_bytes(key)
    assert body is not None
    text = gzip.decompress(body).decode().replace('"token_id\\":\\"t3\\"', '"token_id\\":\\"tX\\"')
    altered = gzip.compress(text.encode(), mtime=0)
    assert altered != body
    s3.put_bytes(key, altered)
    if fix_manifest is not None:
        manifest = json.loads(s3.get_bytes(fix_manifest) or b"")
        manifest["object_sha256"] = hashlib.sha256(altered).hexdigest()
        manifest["object_bytes"] = len(altered)
        s3.put_bytes(fix_manifest, json.dumps(manifest).encode())


def _archived(engine: Engine, signer: HSMTreeHeadSigner, s3: S3ObjectStore) -> bytes:
    append(engine, 24)
    sequence(engine, signer)
    archive_log(engine, s3, prefix=PREFIX, max_entries=8)
    verify_archive(s3, PREFIX, signer.public_key_pem())
    return signer.public_key_pem()


def test_an_altered_segment_is_named(
    engine: Engine, signer: HSMTreeHeadSigner, s3: S3ObjectStore
) -> None:
    pem = _archived(engine, signer, s3)
    _tamper_entry(s3, segment_key(PREFIX, 0, 8), fix_manifest=None)
    with pytest.raises(AuditVerificationFailed, match="segment 0-8 was altered"):
        verify_archive(s3, PREFIX, pem)


def test_an_altered_segment_with_a_matching_manifest_is_named(
    engine: Engine, signer: HSMTreeHeadSigner, s3: S3ObjectStore
) -> None:
    pem = _archived(engine, signer, s3)
    _tamper_entry(s3, segment_key(PREFIX, 0, 8), fix_manifest=manifest_key(PREFIX, 0, 8))
    with pytest.raises(AuditVerificationFailed, match="segment 0-8: the entries do not hash"):
        verify_archive(s3, PREFIX, pem)


def test_a_missing_segment_is_named(
    engine: Engine, signer: HSMTreeHeadSigner, s3: S3ObjectStore
) -> None:
    pem = _archived(engine, signer, s3)
    s3._client.delete_object(Bucket=BUCKET, Key=segment_key(PREFIX, 8, 16))
    with pytest.raises(AuditVerificationFailed, match="segment 8-16 is missing"):
        verify_archive(s3, PREFIX, pem)


def test_a_missing_manifest_is_a_gap(
    engine: Engine, signer: HSMTreeHeadSigner, s3: S3ObjectStore
) -> None:
    pem = _archived(engine, signer, s3)
    s3._client.delete_object(Bucket=BUCKET, Key=manifest_key(PREFIX, 8, 16))
    with pytest.raises(
        AuditVerificationFailed, match=r"leaves 8\.\.15: a gap before segment 16-24"
    ):
        verify_archive(s3, PREFIX, pem)


def test_an_overlapping_segment_is_named(
    engine: Engine, signer: HSMTreeHeadSigner, s3: S3ObjectStore
) -> None:
    pem = _archived(engine, signer, s3)
    manifest = json.loads(s3.get_bytes(manifest_key(PREFIX, 8, 16)) or b"")
    manifest["start"] = 4
    s3.put_bytes(manifest_key(PREFIX, 4, 16), json.dumps(manifest).encode())
    with pytest.raises(AuditVerificationFailed, match="segment 4-16 overlaps 0-8"):
        verify_archive(s3, PREFIX, pem)


def test_a_head_signed_by_another_key_is_named(
    engine: Engine, signer: HSMTreeHeadSigner, s3: S3ObjectStore
) -> None:
    _archived(engine, signer, s3)
    other = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(AuditVerificationFailed, match="segment 0-8: tree head 8: the signature"):
        verify_archive(s3, PREFIX, other)


def test_a_manifest_of_another_content_is_never_overwritten(
    engine: Engine, signer: HSMTreeHeadSigner, s3: S3ObjectStore
) -> None:
    append(engine, 8)
    sequence(engine, signer)
    s3.put_bytes(manifest_key(PREFIX, 0, 8), json.dumps({"format": "x"}).encode())
    with pytest.raises(ArchiveFailed, match="different manifest"):
        archive_log(engine, s3, prefix=PREFIX, max_entries=8)
    with pytest.raises(AuditVerificationFailed, match=r"manifest prod/audit/manifests/0-8\.json"):
        read_manifests(s3, PREFIX)


def test_a_segment_uploaded_but_not_recorded_is_recorded_next_time(
    engine: Engine, signer: HSMTreeHeadSigner, s3: S3ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between the upload and the database record: the next run finds the
    manifest of the same content and records it, without uploading again."""
    append(engine, 8)
    sequence(engine, signer)

    def crash(*_: object) -> None:
        raise ArchiveFailed("the process died here")

    with monkeypatch.context() as patched:
        patched.setattr("audit.archive._record", crash)
        with pytest.raises(ArchiveFailed, match="died"):
            archive_log(engine, s3, prefix=PREFIX, max_entries=8)
    assert s3.get_bytes(manifest_key(PREFIX, 0, 8)) is not None
    (again,) = archive_log(engine, s3, prefix=PREFIX, max_entries=8)
    assert ((again.start, again.end), again.uploaded) == ((0, 8), False)
    assert [(a["details"]["start"], a["details"]["end"]) for a in _archive_actions(engine)] == [
        (0, 8)
    ]
    assert verify_archive(s3, PREFIX, signer.public_key_pem()).entries == 8
