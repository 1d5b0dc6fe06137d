"""Review 35: `cofre audit export --out` ended by a signal left its partial copy behind.

Since session 34 the export writes a new 0600 file, ``.cofre-export-*.tmp``, beside
the name and renames it once whole. A SIGTERM (the default action: no clean-up) or a
SIGKILL left that file: a copy of (part of) the audit log that accumulates and that an
operator may take for an export. A SIGTERM or SIGINT now removes it before the process
ends; after a SIGKILL (nothing runs) the next export in that directory removes the
partial copies left by earlier runs: only its own (the same prefix, regular files of
this user's, older than the run and held by no export under way), never through a link.

Real `cofre audit export` processes and real signals, on PostgreSQL: the export is held
mid-way by a lock on the log's table (its `audit_read` entry, written with the new file
made, waits on it), so the signal comes while the partial copy exists.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault

# Bounds on waiting for a process: they fail only on a hang.
BOUND = 60.0
PREFIX = ".cofre-export-"


@pytest.fixture
def vault(
    tmp_path_factory: pytest.TempPathFactory, softhsm_token: SoftHSMToken, pg_database: str
) -> VaultProcess:
    vault = make_vault(tmp_path_factory.mktemp("export") / "node", softhsm_token, pg_database)
    vault.start()
    vault.stop()
    assert vault.cofre("audit", "sequence").returncode == 0
    # The export waits on the lock below for as long as the test holds it.
    vault.env["COFRE_DATABASE__STATEMENT_TIMEOUT_MS"] = "300000"
    return vault


@contextmanager
def _log_locked(database_url: str) -> Iterator[None]:
    """A lock on the log's entries that lets reads through: the export's `audit_read`
    entry (written with its new file made, before the copy) waits on it."""
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(dsn) as connection:
        connection.execute("LOCK TABLE audit_entries IN SHARE MODE")
        try:
            yield
        finally:
            connection.rollback()


def _export(vault: VaultProcess, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cofre_cli", "audit", "export", "--out", str(out)],
        env=vault.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _partial(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.startswith(PREFIX))


def _until_partial(directory: Path, process: subprocess.Popen[str]) -> list[str]:
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        if found := _partial(directory):
            return found
        if process.poll() is not None:
            pytest.fail(f"the export ended first: {process.communicate()}")
        time.sleep(0.02)
    pytest.fail("the export made no new file")


def _interrupted(vault: VaultProcess, directory: Path, signum: int) -> subprocess.Popen[str]:
    """An export to `directory`, sent `signum` while its partial copy exists."""
    process = _export(vault, directory / "export.jsonl")
    try:
        with _log_locked(vault.env["COFRE_DATABASE__URL"]):
            _until_partial(directory, process)
            process.send_signal(signum)
            if signum == signal.SIGKILL:
                process.wait(timeout=BOUND)
        process.wait(timeout=BOUND)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    return process


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_removes_the_partial_copy(
    vault: VaultProcess, tmp_path: Path, signum: int
) -> None:
    (tmp_path / "export.jsonl").write_text("last month's export\n")
    process = _interrupted(vault, tmp_path, signum)
    assert process.returncode != 0
    assert sorted(os.listdir(tmp_path)) == ["export.jsonl"]
    assert (tmp_path / "export.jsonl").read_text() == "last month's export\n"


def test_the_next_export_removes_what_a_killed_one_left(
    vault: VaultProcess, tmp_path: Path
) -> None:
    _interrupted(vault, tmp_path, signal.SIGKILL)
    left = _partial(tmp_path)
    assert len(left) == 1  # nothing runs on SIGKILL: the partial copy stays...
    # ...beside what the next export must not touch: another prefix, a link to a file
    # elsewhere, a directory, a file newer than the run, one an export under way holds.
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "target").write_text("not ours to remove\n")
    (tmp_path / ".cofre-exports-notes.tmp").write_text("other prefix\n")
    (tmp_path / f"{PREFIX}0000000000000001.tmp").symlink_to(keep / "target")
    (tmp_path / f"{PREFIX}0000000000000002.tmp").mkdir()
    newer = tmp_path / f"{PREFIX}0000000000000003.tmp"
    newer.write_text("")
    future = time.time() + 3600
    os.utime(newer, (future, future))
    held = tmp_path / f"{PREFIX}0000000000000004.tmp"
    held.write_text("an export under way\n")
    past = time.time() - 3600
    os.utime(held, (past, past))
    holder = os.open(held, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        done = _export(vault, tmp_path / "export.jsonl")
        _, err = done.communicate(timeout=BOUND)
    finally:
        os.close(holder)
    assert done.returncode == 0, err[-2000:]
    remaining = _partial(tmp_path)
    assert left[0] not in remaining
    assert remaining == [f"{PREFIX}000000000000000{n}.tmp" for n in (1, 2, 3, 4)]
    assert (keep / "target").read_text() == "not ours to remove\n"
    assert (tmp_path / ".cofre-exports-notes.tmp").exists()
    assert (tmp_path / "export.jsonl").stat().st_size > 0
