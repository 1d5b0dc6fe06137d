"""A bundle is read within fixed bounds (review 29): at most `MAX_MEMBERS` members,
each at most `MAX_FILE` bytes, `MAX_TOTAL` bytes decompressed in all; past them it is
refused with a failed report before anything is kept in memory (no MemoryError)."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from cofre_evidence_verifier import bundle as bundle_module
from cofre_evidence_verifier.bundle import MAX_FILE, MAX_MEMBERS, MAX_TOTAL
from cofre_evidence_verifier.errors import UnsafeBundle
from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import ORIGIN, AuditKey, build, day_log, witness

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


class _Zeros(io.RawIOBase):
    """`n` zero bytes, read in chunks (never whole in memory)."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        k = min(len(buffer), self.left)
        buffer[:k] = bytes(k)
        self.left -= k
        return k


def _bomb(path: Path, members: int, size: int) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as archive:
        for i in range(members):
            info = tarfile.TarInfo(f"pad/{i}.bin")
            info.size = size
            archive.addfile(info, _Zeros(size))
    return path


def test_the_caps_leave_room_for_a_large_period() -> None:
    # A 31-day period of a busy vault: entries.jsonl at its cap (about 1.5 million
    # entries of 350 bytes), a head every 10 s (about 90 MB), proofs and policies.
    assert MAX_TOTAL >= MAX_FILE + 300 * MIB
    assert MAX_MEMBERS >= 21 * 20  # the exporter writes 21 at most


def test_the_genuine_bundle_is_within_the_caps(tmp_path: Path) -> None:
    w = witness()
    bundle = build(day_log(20), 3, 20, witnesses=[w])
    path = bundle.write(tmp_path / "b.tar.gz")
    assert verify_bundle(path, bundle.key.pem, witness_keys=[w.verifier_key()], origin=ORIGIN).ok


def test_too_many_decompressed_bytes_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundle_module, "MAX_TOTAL", 4 * MIB)
    path = _bomb(tmp_path / "bomb.tar.gz", 3, 2 * MIB)  # each member under MAX_FILE
    with pytest.raises(UnsafeBundle, match="decompresses to more than"):
        bundle_module.read_bundle(path)
    report = verify_bundle(path, AuditKey().pem, origin=ORIGIN)
    assert any("decompresses to more than" in p for p in report.problems), report.problems


def test_too_many_members_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = witness()
    bundle = build(day_log(20), 3, 20, witnesses=[w])
    monkeypatch.setattr(bundle_module, "MAX_MEMBERS", 20)
    bundle.extra_members += [(f"pad/{i}", b"") for i in range(20)]
    path = bundle.write(tmp_path / "b.tar.gz")
    with pytest.raises(UnsafeBundle, match="more than 20 members"):
        bundle_module.read_bundle(path)
    report = verify_bundle(path, bundle.key.pem, witness_keys=[w.verifier_key()], origin=ORIGIN)
    assert any("more than 20 members" in p for p in report.problems), report.problems


def test_a_member_twice_is_refused(tmp_path: Path) -> None:
    w = witness()
    bundle = build(day_log(20), 3, 20, witnesses=[w])
    bundle.extra_members.append(("audit/entries.jsonl", b""))
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        bundle.key.pem,
        witness_keys=[w.verifier_key()],
        origin=ORIGIN,
    )
    assert any("twice" in p for p in report.problems), report.problems


@pytest.mark.parametrize("cut", [10, 100, 1000])
def test_a_truncated_archive_is_refused(tmp_path: Path, cut: int) -> None:
    w = witness()
    bundle = build(day_log(20), 3, 20, witnesses=[w])
    data = bundle.write(tmp_path / "b.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[:cut])
    report = verify_bundle(tmp_path / "cut.tar.gz", bundle.key.pem, origin=ORIGIN)
    assert any(p.startswith("cannot read the bundle") for p in report.problems), report.problems


# Verifies the bundle in argv[1] under a 2 GiB address-space limit and prints the report.
_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cofre_evidence_verifier.verify import verify_bundle
pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
report = verify_bundle(Path(sys.argv[1]), pem, unsafe_no_witnesses=True, origin="cofre-audit/cofre")
print(report.ok, report.problems)
"""


@pytest.mark.slow
def test_a_decompression_bomb_gets_a_failed_report_in_bounded_memory(tmp_path: Path) -> None:
    """Review 29's bomb: members of 511 MiB of zeros (each under the per-member cap),
    2 GiB in all from a 9 MB file. With every member kept in memory the verifier ran
    out of memory under a 2 GiB address-space limit; it is refused before any member
    is read."""
    path = _bomb(tmp_path / "bomb.tar.gz", 4, 511 * MIB)
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)],
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(ROOT / "verifier" / "src")},
        timeout=300,
    )
    path.unlink()
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("False"), result.stdout
    assert "decompresses to more than" in result.stdout, result.stdout
