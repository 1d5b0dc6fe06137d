"""Drill 36: `cofre evidence export --out` when the download goes wrong, against a real
`cofre serve`. A bundle holds the period's audit entries, so it is a copy of the log
(PCI DSS 10.3.1) as `cofre audit export`'s file is, and is written the same way
(`cofre_cli.audit_trail.private_download`): a new 0600 file that takes the name once
whole. Before, it went through `<out>.part`: a SIGTERM left it behind (and it then
refused every later download to that name), and a full disk ended the command in a
Python traceback. (A vault that cannot be reached: tests/cofre_cli/
test_vault_unreachable.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cofre_cli.audit_trail import private_export
from tests.support.disks import small_tmpfs
from tests.support.pans import card_number
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault

# Bounds on waiting for a process: they fail only on a hang.
BOUND = 60.0
# Tries at catching a download between its new file and the rename (milliseconds wide).
TRIES = 40


@pytest.fixture(scope="module")
def vault(
    tmp_path_factory: pytest.TempPathFactory, softhsm_token: SoftHSMToken
) -> Iterator[VaultProcess]:
    node = make_vault(tmp_path_factory.mktemp("evidence-download") / "v", softhsm_token, None)
    node.start()
    with node.client() as client:
        for i in range(20):
            pan = card_number("4", 3600 + i)
            assert client.post("/v1/tokenize", json={"pan": pan, "format": "uuid"}).is_success
    yield node
    node.stop()


def _argv(out: Path) -> list[str]:
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    return [
        "evidence", "export", "--as", "auditor", "--from", since, "--to", later,
        "--out", str(out),
    ]  # fmt: skip


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 KiB tmpfs: smaller than any bundle."""
    with small_tmpfs(tmp_path / "disk", "size=8k,mode=0700") as mount:
        yield mount


def test_a_full_disk_is_one_error_line_and_leaves_nothing(
    vault: VaultProcess, tiny_disk: Path
) -> None:
    made = vault.cofre(*_argv(tiny_disk / "bundle.tar.gz"))
    assert made.returncode == 1
    assert "Traceback" not in made.stderr, made.stderr
    assert made.stderr.strip().splitlines()[-1] == (
        "error [configuration_error]: cannot write the --out file (No space left on device)"
    )
    assert os.listdir(tiny_disk) == []


def test_the_bundle_is_readable_by_its_owner_alone(vault: VaultProcess, tmp_path: Path) -> None:
    out = tmp_path / "bundle.tar.gz"
    made = vault.cofre(*_argv(out))
    assert made.returncode == 0, made.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["bundle.tar.gz"]


def _left(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_sigterm_mid_download_leaves_the_whole_bundle_or_nothing(
    vault: VaultProcess, tmp_path: Path
) -> None:
    """The command is frozen (SIGSTOP) while a file other than the bundle exists in the
    directory (its new file, before the rename), sent SIGTERM and let go: whatever it
    was doing, the directory then holds the whole bundle or nothing."""
    for attempt in range(TRIES):
        directory = tmp_path / f"try-{attempt}"
        directory.mkdir()
        out = directory / "bundle.tar.gz"
        process = subprocess.Popen(
            [sys.executable, "-m", "cofre_cli", *_argv(out)],
            env=vault.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        caught = False
        try:
            deadline = time.monotonic() + BOUND
            while process.poll() is None and time.monotonic() < deadline:
                if [n for n in _left(directory) if n != out.name]:
                    process.send_signal(signal.SIGSTOP)
                    caught = bool([n for n in _left(directory) if n != out.name])
                    process.send_signal(signal.SIGTERM)
                    process.send_signal(signal.SIGCONT)
                    break
            process.wait(timeout=BOUND)
        finally:
            if process.poll() is None:
                process.kill()
            _, stderr = process.communicate()
        assert "Traceback" not in stderr, stderr
        left = _left(directory)
        assert left in ([], [out.name]), left
        if left:
            with tarfile.open(out) as bundle:  # whole: it opens and lists to its end
                assert bundle.getnames()
        if caught:
            assert process.returncode in (0, 128 + signal.SIGTERM), stderr
            return
    pytest.fail(f"no download caught between its new file and the rename in {TRIES} tries")


def test_a_stop_signal_as_the_new_file_is_made_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM that lands between the new file's creation and the `fstat` that makes
    it the export's to remove (the window the test above met about once in three runs)
    used to raise with nothing known of the file, and left it. In process: the signal is
    sent from inside that `fstat`, the file's first."""
    real_fstat = os.fstat

    def fstat_with_a_stop(descriptor: int) -> os.stat_result:
        if Path(os.readlink(f"/proc/self/fd/{descriptor}")).name.startswith(".cofre-export-"):
            monkeypatch.setattr(os, "fstat", real_fstat)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_fstat(descriptor)

    monkeypatch.setattr(os, "fstat", fstat_with_a_stop)
    with pytest.raises(SystemExit) as stopped:
        private_export(tmp_path / "export.jsonl", lambda: None)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back as it was
