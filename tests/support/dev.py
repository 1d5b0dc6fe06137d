"""`cofre dev` (what `make run` runs) as a test starts it: a clean environment of the
caller's, a private data directory and a free mTLS port, its output on a text pipe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support.postgres import free_port

if TYPE_CHECKING:  # softhsm.py runs commands in clean_env()
    from tests.support.softhsm import SoftHSMToken

__all__ = [
    "alive",
    "assert_gone",
    "clean_env",
    "run_cofre",
    "start_dev",
    "until_listening",
    "vault_cli_env",
    "witnesses_of",
]


def clean_env() -> dict[str, str]:
    """This process's environment without any COFRE_ or SOFTHSM2_ variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}


def vault_cli_env(tmp_path: Path, token: SoftHSMToken, database_url: str) -> dict[str, str]:
    """The environment of a `cofre` command on `token` and `database_url`, its data in
    ``tmp_path/data``: the PIN in a file only its owner reads, never on a command line."""
    pin = tmp_path / "cofre-hsm-pin"
    pin.write_text(token.user_pin)
    pin.chmod(0o400)
    return clean_env() | {
        "COFRE_HSM__LIBRARY": str(token.library),
        "COFRE_HSM__TOKEN_LABEL": token.label,
        "COFRE_HSM__PIN_FILE": str(pin),
        "COFRE_HSM__SOFTHSM_CONF": str(token.conf),
        "COFRE_DATABASE__URL": database_url,
        "COFRE_DATA_DIR": str(tmp_path / "data"),
    }


def run_cofre(words: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``cofre WORDS...`` (this interpreter's `cofre_cli`) in `cwd` with `env`, its
    output captured as text; the exit status is the caller's to check."""
    assert words[0] == "cofre", words
    return subprocess.run(
        [sys.executable, "-m", "cofre_cli", *words[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # a far bound: fails only on a hang
        check=False,
    )


def start_dev(data_dir: Path, env: dict[str, str], *options: str) -> subprocess.Popen[str]:
    """Start `cofre dev --data-dir DATA_DIR --port <free> OPTIONS...` with `env`,
    stdout and stderr together on `.stdout` (text); the caller stops it."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cofre_cli",
            "dev",
            "--data-dir",
            str(data_dir),
            "--port",
            str(free_port()),
            *options,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def until_listening(dev: subprocess.Popen[str]) -> list[str]:
    """`dev`'s output up to its "The vault listens on" line (printed once every worker
    answers), asserted there; a vault that dies first ends the output and fails it."""
    assert dev.stdout is not None
    output = []
    for line in dev.stdout:
        output.append(line)
        if line.startswith("The vault listens on"):
            break
    assert output, "cofre dev printed nothing"
    assert output[-1].startswith("The vault listens on"), "".join(output)
    return output


def witnesses_of(data_dir: Path) -> list[int]:
    """The pids of `cofre witness serve` processes using `data_dir`'s witness state."""
    state = str(data_dir / "witness" / "state.sqlite3").encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"witness\0serve" in cmdline and state in cmdline:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def assert_gone(witnesses: list[int]) -> None:
    """Wait for `witnesses` to end (bounded: only a witness left behind runs it out);
    kill and name any left."""
    for _ in range(600):
        if not any(alive(pid) for pid in witnesses):
            break
        time.sleep(0.1)
    left = [pid for pid in witnesses if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], "the witness outlived cofre dev"
