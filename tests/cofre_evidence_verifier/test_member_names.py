"""A member's name is the one name a file has on every reader's disk.

`tar -xzf` (the auditor guide's hand check) writes `./audit/entries.jsonl`,
`audit//entries.jsonl` and `audit/./entries.jsonl` to the same file as
`audit/entries.jsonl`, and a case-insensitive file system (macOS, Windows) writes
`Audit/Entries.jsonl` there too; the later member wins. The verifier took them for
different files: listed in the manifest (its holder signs what they like), an alias
written after the genuine member passed every check, and the auditor who unpacked the
VERIFIED bundle read entries nothing checked.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from cofre_evidence_verifier.bundle import read_bundle
from cofre_evidence_verifier.errors import UnsafeBundle
from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import ORIGIN, build, day_log, payload, witness

ALIASES = [
    "./audit/entries.jsonl",
    "audit//entries.jsonl",
    "audit/./entries.jsonl",
    "Audit/Entries.jsonl",
    "audit\\entries.jsonl",
]


@pytest.mark.parametrize("alias", ALIASES)
def test_an_alias_of_a_checked_member_is_refused(tmp_path: Path, alias: str) -> None:
    w = witness()
    bundle = build(day_log(20), 3, 20, witnesses=[w])
    forged = payload("tokenize", "2026-03-01T05:00:00.000000Z", request_id="forged")
    bundle.files[alias] = f'{{"index": 3, "payload": {forged!r}}}\n'.encode()
    bundle.resign()  # the manifest lists the alias too
    bundle.extra_members.append((alias, bundle.files.pop(alias)))  # written last
    path = bundle.write(tmp_path / "b.tar.gz", resign=False)
    report = verify_bundle(path, bundle.key.pem, witness_keys=[w.verifier_key()], origin=ORIGIN)
    assert not report.ok
    assert any("cannot read the bundle" in p for p in report.problems), report.problems


@pytest.mark.parametrize("name", ["a", "audit/entries.jsonl", "tls/certificates.json"])
def test_plain_names_are_read(tmp_path: Path, name: str) -> None:
    path = tmp_path / "b.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo(name)
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    assert read_bundle(path) == {name: b"x"}


def test_two_names_one_file_on_a_case_insensitive_disk(tmp_path: Path) -> None:
    path = tmp_path / "b.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name in ("keys/inventory.json", "keys/INVENTORY.json"):
            info = tarfile.TarInfo(name)
            info.size = 1
            archive.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(UnsafeBundle, match="twice"):
        read_bundle(path)
