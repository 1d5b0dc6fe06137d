"""`cofre dev` stopped by SIGTERM while it starts, or killed outright, takes its local
witness with it.

Session 33: a SIGTERM after the witness had started and before the vault's own signal
handling took over killed `cofre dev` by the signal's default action, so its `finally`
never stopped the witness: every such stop (a test's, an IDE's, `timeout`'s) left a
`cofre witness serve` process running, holding its port and state file. Session 34: a
SIGKILL (the OOM killer, `kill -9`) runs no `finally` at all; the witness now asks the
kernel for a signal when `cofre dev` dies (Linux ``PR_SET_PDEATHSIG``)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.dev import clean_env, start_dev


def _witnesses_of(data_dir: Path) -> list[int]:
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


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _stop_once_starting(data_dir: Path, stop: signal.Signals) -> list[int]:
    """Start `cofre dev`, send it `stop` as soon as the vault says it starts (after the
    witness, before serving), wait for it to end; return its witnesses' pids."""
    dev = start_dev(data_dir, clean_env(), "--workers", "1")
    witnesses: list[int] = []
    try:
        assert dev.stdout is not None
        for line in dev.stdout:
            if line.startswith("{") and '"event": "starting"' in line:
                break
        witnesses = _witnesses_of(data_dir)
        assert witnesses, "cofre dev started no witness"
    finally:
        dev.send_signal(stop)
        dev.communicate(timeout=120)
    return witnesses


def _assert_gone(witnesses: list[int]) -> None:
    """Wait for `witnesses` to end (bounded: only a witness left behind runs it out);
    kill and name any left."""
    for _ in range(600):
        if not any(_alive(pid) for pid in witnesses):
            break
        time.sleep(0.1)
    left = [pid for pid in witnesses if _alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], "the witness outlived cofre dev"


@pytest.mark.hsm  # `cofre dev` creates a SoftHSM2 token
def test_a_sigterm_during_start_stops_the_witness(tmp_path: Path) -> None:
    _assert_gone(_stop_once_starting(tmp_path / "dev", signal.SIGTERM))


@pytest.mark.hsm
def test_a_sigkill_of_cofre_dev_ends_the_witness(tmp_path: Path) -> None:
    """No `finally` runs on SIGKILL: the kernel's parent-death signal ends the witness."""
    _assert_gone(_stop_once_starting(tmp_path / "dev", signal.SIGKILL))
