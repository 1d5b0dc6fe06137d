"""A bundle is one gzip stream and nothing after it.

Python's `tarfile` (the verifier's stream reader) stops at the end of the first gzip
member when the tar inside it has no end-of-archive blocks, and ignores what follows;
`gzip`, GNU tar and the auditor's hand check (`tar -xzf bundle.tar.gz`, auditor guide)
read every member of a concatenated gzip file. So a bundle of two gzip members verified
on its first member while the files the auditor unpacks by hand came from the second,
later copies replacing earlier ones: a `keys/inventory.json`, an `audit/entries.jsonl`
nothing verified, beside a VERIFIED report that said "nothing else is in the bundle".
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from cofre_evidence_verifier.bundle import read_bundle
from cofre_evidence_verifier.errors import UnsafeBundle
from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import ORIGIN, build, day_log, witness


def _tar(members: list[tuple[str, bytes]], *, end: bool) -> bytes:
    """The tar of `members`, with or without its end-of-archive blocks."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        last = archive.offset  # where the end-of-archive blocks start
    return buffer.getvalue() if end else buffer.getvalue()[:last]


def test_a_second_gzip_member_is_refused(tmp_path: Path) -> None:
    w = witness()
    bundle = build(day_log(20), 3, 20, witnesses=[w])
    bundle.resign()
    genuine = _tar(sorted(bundle.files.items()), end=False)
    hidden = _tar(
        [("keys/inventory.json", b'{"keys": "what the auditor reads"}'), ("x.txt", b"x")],
        end=True,
    )
    path = tmp_path / "b.tar.gz"
    path.write_bytes(gzip.compress(genuine) + gzip.compress(hidden))
    # What the auditor's own tools unpack: the second member's files too.
    with tarfile.open(path, "r:gz") as archive:
        assert "x.txt" in archive.getnames()
    report = verify_bundle(path, bundle.key.pem, witness_keys=[w.verifier_key()], origin=ORIGIN)
    assert not report.ok
    assert any("gzip" in p for p in report.problems), report.problems


@pytest.mark.parametrize("tail", [b"\x00" * 1024, b"garbage", gzip.compress(b"")])
def test_anything_after_the_gzip_stream_is_refused(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "b.tar.gz"
    path.write_bytes(gzip.compress(_tar([("a", b"a")], end=True)) + tail)
    with pytest.raises(UnsafeBundle, match="gzip"):
        read_bundle(path)


def test_one_gzip_stream_is_read(tmp_path: Path) -> None:
    path = tmp_path / "b.tar.gz"
    path.write_bytes(gzip.compress(_tar([("a", b"a")], end=True)))
    assert read_bundle(path) == {"a": b"a"}
