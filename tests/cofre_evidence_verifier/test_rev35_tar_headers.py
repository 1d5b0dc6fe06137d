"""Review 35: the auditor's `tar -xzf` unpacked other files than the ones the verifier
checked, from a bundle it said VERIFIED.

The verifier read the archive with Python's `tarfile`, which is lenient where GNU tar,
bsdtar (macOS, Windows) and the auditor guide's `tar -xzf` are not, or the reverse:

- a header with GNU tar's magic (``ustar  ``) and bytes in the POSIX ``prefix`` field:
  `tarfile` puts the prefix before the name whatever the magic, GNU tar and bsdtar
  read no prefix in a GNU header. The operator lists ``notes/audit/entries.jsonl``
  in the manifest they sign (they hold the HSM PIN); `tar -xzf` writes it over the
  genuine ``audit/entries.jsonl``, with a detokenize taken out, silently (exit 0);
- a size field that `int()` reads and tar reads otherwise (``+``, ``_``): tar frames
  the members differently from there on;
- members after the end-of-archive blocks, or after one zero block: `tarfile` stops
  there, ``tar -i`` (and tools that ignore zero blocks) read on;
- a pax extended header's ``path``, which tools without pax support do not read;
- a member's mode with set-user-ID or execute bits: `tar -xzf` run as root restores
  them on the unpacked file.

The exporter writes plain POSIX ustar members and nothing else, so the verifier now
reads exactly that and refuses every other header, every byte after the archive's end
that is not zero, and every other mode. Each case verified before the fix.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from cofre_evidence_verifier.bundle import read_bundle
from cofre_evidence_verifier.errors import UnsafeBundle
from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import ORIGIN, Bundle, build, day_log, witness

POSIX = b"ustar\x0000"
GNU = b"ustar  \x00"
ENTRIES = "audit/entries.jsonl"


def _header(
    name: str,
    size: int,
    *,
    magic: bytes = POSIX,
    prefix: bytes = b"",
    typeflag: bytes = b"0",
    size_field: bytes | None = None,
    mode: int = 0o644,
) -> bytes:
    """One tar header block, with its checksum."""
    block = bytearray(512)
    block[0 : len(name)] = name.encode()
    block[100:108] = b"%07o\x00" % mode
    block[108:116] = b"0000000\x00"
    block[116:124] = b"0000000\x00"
    block[124:136] = size_field if size_field is not None else b"%011o\x00" % size
    block[136:148] = b"00000000000\x00"
    block[156:157] = typeflag
    block[257:265] = magic
    block[345 : 345 + len(prefix)] = prefix
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def _member(name: str, data: bytes, **fields: object) -> bytes:
    return _header(name, len(data), **fields) + data + bytes(-len(data) % 512)  # type: ignore[arg-type]


def _archive(path: Path, body: bytes, tail: bytes = bytes(1024)) -> Path:
    path.write_bytes(gzip.compress(body + tail))
    return path


def _genuine() -> tuple[Bundle, list[object]]:
    w = witness()
    bundle = build(day_log(20), 3, 20, witnesses=[w])
    return bundle, [w.verifier_key()]


def _members(files: dict[str, bytes]) -> bytes:
    return b"".join(_member(name, data) for name, data in sorted(files.items()))


def _forged_entries(bundle: Bundle) -> bytes:
    """The period's entries with entry 5 taken out (a detokenize hidden)."""
    rows = [r for r in bundle.jsonl(ENTRIES) if r["index"] != 5]
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()


def _verify(bundle: Bundle, path: Path, keys: list[object]) -> list[str]:
    report = verify_bundle(path, bundle.key.pem, witness_keys=keys, origin=ORIGIN)  # type: ignore[arg-type]
    assert not report.ok, "VERIFIED a bundle tar unpacks differently"
    return report.problems


def test_the_plain_ustar_bundle_verifies(tmp_path: Path) -> None:
    bundle, keys = _genuine()
    bundle.resign()
    path = _archive(tmp_path / "b.tar.gz", _members(bundle.files))
    assert verify_bundle(path, bundle.key.pem, witness_keys=keys, origin=ORIGIN).ok  # type: ignore[arg-type]


def test_a_prefix_in_a_gnu_header_is_refused(tmp_path: Path) -> None:
    """The manifest lists `notes/audit/entries.jsonl` as `tarfile` names the member;
    GNU tar reads no prefix in a GNU header and writes the forged entries over the
    genuine ones."""
    bundle, keys = _genuine()
    forged = _forged_entries(bundle)
    bundle.files["notes/" + ENTRIES] = forged
    bundle.resign()
    listed = dict(bundle.files)
    del listed["notes/" + ENTRIES]
    body = _members(listed) + _member(ENTRIES, forged, magic=GNU, prefix=b"notes")
    path = _archive(tmp_path / "b.tar.gz", body)
    # What the auditor guide's hand check unpacks: the forged entries, silently.
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-xzf", str(path), "-C", str(unpacked)], check=True)
    assert (unpacked / ENTRIES).read_bytes() == forged
    problems = _verify(bundle, path, keys)
    assert any(p.startswith("cannot read the bundle: ") for p in problems), problems
    with pytest.raises(UnsafeBundle, match="POSIX ustar"):
        read_bundle(path)


@pytest.mark.parametrize("spelt", [b"+%010o\x00", b"0_%09o\x00"], ids=["plus", "underscore"])
def test_a_size_tar_reads_otherwise_is_refused(tmp_path: Path, spelt: bytes) -> None:
    """`int()` reads both; GNU tar reads the first as an old base-64 number and skips
    the second to the next header it can read, which the verifier took for data."""
    bundle, keys = _genuine()
    bundle.resign()
    data = bundle.files[ENTRIES]
    others = {n: d for n, d in bundle.files.items() if n != ENTRIES}
    body = _members(others) + _header(ENTRIES, 0, size_field=spelt % len(data))
    body += data + bytes(-len(data) % 512)
    problems = _verify(bundle, _archive(tmp_path / "b.tar.gz", body), keys)
    assert any("size" in p for p in problems), problems


def test_a_size_ended_by_a_space_is_read(tmp_path: Path) -> None:
    # Other writers end a number with a space where `tarfile` writes a NUL: tar reads it.
    bundle, keys = _genuine()
    bundle.resign()
    data = bundle.files[ENTRIES]
    others = {n: d for n, d in bundle.files.items() if n != ENTRIES}
    body = _members(others) + _header(ENTRIES, 0, size_field=b"%011o " % len(data))
    body += data + bytes(-len(data) % 512)
    path = _archive(tmp_path / "b.tar.gz", body)
    assert verify_bundle(path, bundle.key.pem, witness_keys=keys, origin=ORIGIN).ok  # type: ignore[arg-type]


@pytest.mark.parametrize("gap", [bytes(1024), bytes(512)], ids=["after the end", "one zero block"])
def test_members_after_the_end_of_the_archive_are_refused(tmp_path: Path, gap: bytes) -> None:
    """`tarfile` stops at the first zero block; `tar -i`, and tools that skip zero
    blocks, read on and unpack the forged entries over the genuine ones."""
    bundle, keys = _genuine()
    bundle.resign()
    body = _members(bundle.files) + gap + _member(ENTRIES, _forged_entries(bundle))
    path = _archive(tmp_path / "b.tar.gz", body)
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-xizf", str(path), "-C", str(unpacked)], check=True)
    assert (unpacked / ENTRIES).read_bytes() == _forged_entries(bundle)
    problems = _verify(bundle, path, keys)
    assert any("after the end of the archive" in p for p in problems), problems


def test_a_pax_path_is_refused(tmp_path: Path) -> None:
    """A pax header names the member for pax readers; a reader without pax support
    takes the ustar name, `audit/entries.jsonl`."""
    bundle, keys = _genuine()
    bundle.files["notes/x.jsonl"] = _forged_entries(bundle)
    bundle.resign()
    listed = {n: d for n, d in bundle.files.items() if n != "notes/x.jsonl"}
    record = b" path=notes/x.jsonl\n"
    record = b"%d%s" % (len(record) + 2, record)
    forged = bundle.files["notes/x.jsonl"]
    body = (
        _members(listed) + _member("PaxHeaders/x", record, typeflag=b"x") + _member(ENTRIES, forged)
    )
    path = _archive(tmp_path / "b.tar.gz", body)
    with tarfile.open(path, "r:gz") as archive:
        assert "notes/x.jsonl" in archive.getnames()  # as `tarfile` read it
    problems = _verify(bundle, path, keys)
    assert "cannot read the bundle: unsafe member in bundle: 'notes/x.jsonl'" in problems


@pytest.mark.parametrize("mode", [0o4644, 0o2644, 0o1644, 0o755])
def test_a_mode_tar_would_restore_as_root_is_refused(tmp_path: Path, mode: int) -> None:
    """`tar -xzf` run as root restores a member's mode: a set-user-ID executable of the
    operator's making, owned by root, on the auditor's machine."""
    bundle, keys = _genuine()
    bundle.files["requirements.md"] = b"#!/bin/sh\nid\n"
    bundle.resign()
    body = _members({n: d for n, d in bundle.files.items() if n != "requirements.md"})
    body += _member("requirements.md", bundle.files["requirements.md"], mode=mode)
    problems = _verify(bundle, _archive(tmp_path / "b.tar.gz", body), keys)
    assert any("mode" in p for p in problems), problems


@pytest.mark.parametrize("typeflag", [b"5", b"V", b"g", b"L"])
def test_headers_other_than_a_plain_file_are_refused(tmp_path: Path, typeflag: bytes) -> None:
    bundle, keys = _genuine()
    bundle.resign()
    body = _member("audit", b"", typeflag=typeflag) + _members(bundle.files)
    path = _archive(tmp_path / "b.tar.gz", body)
    problems = _verify(bundle, path, keys)
    assert any("unsafe member in bundle" in p for p in problems), problems


@pytest.mark.parametrize("damage", ["checksum", "linkname", "short block"])
def test_a_damaged_header_is_refused(tmp_path: Path, damage: str) -> None:
    bundle, keys = _genuine()
    bundle.resign()
    data = bundle.files["requirements.md"]
    others = _members({n: d for n, d in bundle.files.items() if n != "requirements.md"})
    header = bytearray(_header("requirements.md", len(data)))
    if damage == "checksum":
        header[150] ^= 1
    elif damage == "linkname":  # a link target on a plain file, its checksum valid
        header[157] = ord("x")
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\x00 " % sum(header)
    body = others + bytes(header) + data + bytes(-len(data) % 512) + bytes(1024)
    if damage == "short block":
        body = others + bytes(100)
    problems = _verify(bundle, _archive(tmp_path / "b.tar.gz", body, tail=b""), keys)
    assert any(p.startswith("cannot read the bundle: ") for p in problems), problems


@pytest.mark.parametrize("name", ["audit/entries.jsonl.", "audit./entries.jsonl"])
def test_a_name_windows_reads_as_another_is_refused(tmp_path: Path, name: str) -> None:
    """Windows drops a component's trailing dot: an unpacker that goes through its file
    APIs writes this member over `audit/entries.jsonl`."""
    bundle, keys = _genuine()
    bundle.files[name] = _forged_entries(bundle)
    bundle.resign()
    body = _members({n: d for n, d in bundle.files.items() if n != name})
    body += _member(name, bundle.files[name])
    problems = _verify(bundle, _archive(tmp_path / "b.tar.gz", body), keys)
    assert f"cannot read the bundle: unsafe member in bundle: '{name}'" in problems, problems
