"""Review of session 32's CLI reads of the audit log (finding F6): what an operator's
shell account puts into an `audit_read` entry through the command line, and what the
copy of the log `cofre audit export` leaves on the host.

Real `cofre serve` and `cofre audit` processes, a copy of the suite's SoftHSM token,
SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from audit.errors import AuditWriteFailed
from cofre_cli.audit_trail import private_export
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault

# A Luhn-valid test card number, assembled so the source holds none in one piece.
PAN = "4111" + "1" * 12


def _reads(url: str) -> list[tuple[bytes, dict[str, Any]]]:
    """Every `audit_read` entry written: its stored bytes and the parsed entry."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT payload FROM audit_entries ORDER BY id"))
            payloads = [row[0] for row in rows]
    finally:
        engine.dispose()
    out = []
    for payload in payloads:
        raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        entry = json.loads(raw)
        if entry["action"] == "audit_read":
            out.append((raw, entry))
    return out


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    """The umask the `cofre` child inherits: a host's usual 022, not the suite's own."""
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


def _vault(tmp_path: Path, token: SoftHSMToken, url: str) -> VaultProcess:
    vault = make_vault(tmp_path / "node", token, url)
    vault.start()
    vault.stop()
    assert vault.cofre("audit", "sequence").returncode == 0
    return vault


def test_an_export_path_holds_no_card_and_keeps_the_log_verifiable(
    tmp_path: Path, softhsm_token: SoftHSMToken, database_url: str
) -> None:
    """The `out` an operator gives is written into the entry: a card number in it is
    masked (held), and a name that is not UTF-8 (any bytes a Linux file name may hold,
    which Python hands over as lone surrogates) neither crashes the command with a
    traceback nor leaves an entry the log cannot hash (before: UnicodeEncodeError)."""
    vault = _vault(tmp_path, softhsm_token, database_url)
    out = Path(os.fsdecode(os.fsencode(tmp_path) + b"/\xff-" + PAN.encode() + b".jsonl"))
    done = vault.cofre("audit", "export", "--out", str(out))
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 0, done.stderr[-2000:]
    assert PAN not in done.stdout  # nor in what it prints (a job's output is logged)
    raw, entry = _reads(database_url)[-1]
    assert PAN.encode() not in raw
    assert entry["details"]["out"].startswith(str(tmp_path) + "/")  # where the copy went
    raw.decode("utf-8", errors="strict")
    assert vault.cofre("audit", "sequence").returncode == 0
    verified = vault.cofre("audit", "verify", "--unsafe-no-witness")
    assert verified.returncode == 0, verified.stderr[-2000:]


def test_an_export_is_readable_by_its_owner_only(
    tmp_path: Path, softhsm_token: SoftHSMToken, database_url: str
) -> None:
    """PCI DSS 10.3.1: the export is a copy of the whole log. Written with the host's
    umask it was readable by every account on the host, each of which then read the
    log with no `audit_read` of its own; now it is 0600 whatever the umask."""
    vault = _vault(tmp_path, softhsm_token, database_url)
    out = tmp_path / "export.jsonl"
    with _umask(0o022):
        done = vault.cofre("audit", "export", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    # A file left there before, readable by all, is made the owner's alone too.
    out.chmod(0o644)
    with _umask(0o022):
        assert vault.cofre("audit", "export", "--out", str(out)).returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_an_export_does_not_follow_a_link_planted_for_it(
    tmp_path: Path, softhsm_token: SoftHSMToken, database_url: str
) -> None:
    """Another account that plants a symbolic link where the operator exports (a shared
    directory) to a file it can read gets the log copied into it: the export refuses
    a link, cleanly (exit 1, no traceback), and writes nothing through it. A missing
    directory is the same clean refusal (before: a traceback)."""
    vault = _vault(tmp_path, softhsm_token, database_url)
    target = tmp_path / "theirs.jsonl"
    target.write_text("")
    target.chmod(0o666)
    link = tmp_path / "export.jsonl"
    link.symlink_to(target)
    for out in (link, tmp_path / "missing" / "export.jsonl"):
        done = vault.cofre("audit", "export", "--out", str(out))
        assert done.returncode == 1, (out, done.stdout, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, done.stderr[-2000:]
        assert "error [" in done.stderr
    assert target.read_text() == ""


def test_a_card_number_typed_as_an_index_is_not_repeated(
    tmp_path: Path, softhsm_token: SoftHSMToken, database_url: str
) -> None:
    """`cofre audit prove` records `index`, `size` and `from_size` in its entry (held:
    integers of a card's length are written masked) and then fails on an index or size
    the log does not have: its error repeated the number in clear on stderr, which a
    job's output keeps (the API masks the same message in its problem body)."""
    vault = _vault(tmp_path, softhsm_token, database_url)
    for option in ("--index", "--size"):
        args = ["--index", "0", option, PAN] if option == "--size" else [option, PAN]
        done = vault.cofre("audit", "prove", *args)
        assert done.returncode == 1, (option, done.stdout, done.stderr[-2000:])
        assert "error [" in done.stderr
        assert PAN not in done.stderr + done.stdout, option
        raw, entry = _reads(database_url)[-1]
        assert PAN.encode() not in raw
        assert entry["details"]["what"] == "inclusion proof"


def test_an_out_of_range_number_or_a_missing_key_file_is_a_clean_refusal(
    tmp_path: Path, softhsm_token: SoftHSMToken, database_url: str
) -> None:
    """Error paths of the reads: an index past what the database can hold wrote its
    entry and then left the command with a traceback (OverflowError from the driver);
    a --public-key that cannot be read did too (FileNotFoundError). Each is now refused
    before any read, as the API bounds the same numbers (0 to 2**62)."""
    vault = _vault(tmp_path, softhsm_token, database_url)
    before = len(_reads(database_url))
    huge = str(2**63)
    for args in (
        ("audit", "prove", "--index", huge),
        ("audit", "prove", "--index", "0", "--size", huge),
        ("audit", "prove", "--index", "0", "--from-size", huge),
        ("audit", "prove", "--index", "-1"),
        ("audit", "verify", "--unsafe-no-witness", "--public-key", str(tmp_path / "none.pem")),
    ):
        done = vault.cofre(*args)
        assert done.returncode in (1, 2), (args, done.stdout, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, (args, done.stderr[-2000:])
    assert len(_reads(database_url)) == before  # nothing was read, nothing recorded


# Far above what an export takes: the bound fails only on a hang.
HANG_BOUND = 120.0


def _cofre_bounded(vault: VaultProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """`vault.cofre(*args)`, failing the test (not hanging it) when the command hangs."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "cofre_cli", *args],
            env=vault.env,
            capture_output=True,
            text=True,
            timeout=HANG_BOUND,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"cofre {' '.join(args)} hung") from None


def test_a_fifo_planted_for_the_export_is_refused_before_the_read(
    tmp_path: Path, softhsm_token: SoftHSMToken, database_url: str
) -> None:
    """A FIFO planted where the operator exports (a shared directory): with no reader,
    the export's open waited for one for good, after its `audit_read` entry was written
    (session 33); with a reader (another account's process), the copy would stream to
    it. Both are refused cleanly (exit 1) before the read, so nothing is recorded as
    read and nothing is written into the FIFO."""
    vault = _vault(tmp_path, softhsm_token, database_url)
    before = len(_reads(database_url))
    fifo = tmp_path / "export.jsonl"
    os.mkfifo(fifo, 0o666)
    done = _cofre_bounded(vault, "audit", "export", "--out", str(fifo))
    assert done.returncode == 1, (done.stdout, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "error [configuration_error]" in done.stderr, done.stderr[-2000:]
    # A reader waiting on the FIFO (opened without blocking, as a planted one might be).
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        done = _cofre_bounded(vault, "audit", "export", "--out", str(fifo))
        assert done.returncode == 1, (done.stdout, done.stderr[-2000:])
        assert "not a regular file" in done.stderr, done.stderr[-2000:]
        with contextlib.suppress(BlockingIOError):
            assert os.read(reader, 1 << 16) == b""  # nothing streamed to the reader
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert len(_reads(database_url)) == before  # refused before the entry


def test_a_read_that_cannot_be_recorded_leaves_the_export_path_as_it_was(
    tmp_path: Path,
) -> None:
    """The entry is now written once the file is open and checked: when it cannot be
    written, a file the export created is removed, and one that was there keeps its
    bytes (it is emptied only after the entry)."""

    def refuse() -> None:
        raise AuditWriteFailed("the audit log refused the entry")

    created = tmp_path / "new.jsonl"
    with pytest.raises(AuditWriteFailed):
        private_export(created, refuse)
    assert not created.exists()
    kept = tmp_path / "kept.jsonl"
    kept.write_text("before\n")
    with pytest.raises(AuditWriteFailed):
        private_export(kept, refuse)
    assert kept.read_text() == "before\n"
    written: list[str] = []
    with private_export(kept, lambda: written.append(kept.read_text())) as handle:
        handle.write("after\n")
    assert written == ["before\n"]  # recorded before the file was emptied
    assert kept.read_text() == "after\n"
