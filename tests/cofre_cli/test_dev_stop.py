"""`cofre dev` stopped by SIGTERM while it starts, or killed outright, takes its local
witness with it.

Session 33: a SIGTERM after the witness had started and before the vault's own signal
handling took over killed `cofre dev` by the signal's default action, so its `finally`
never stopped the witness: every such stop (a test's, an IDE's, `timeout`'s) left a
`cofre witness serve` process running, holding its port and state file. Session 34: a
SIGKILL (the OOM killer, `kill -9`) runs no `finally` at all; the witness now asks the
kernel for a signal when `cofre dev` dies (Linux ``PR_SET_PDEATHSIG``)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.support.dev import assert_gone, clean_env, start_dev, witnesses_of


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
        witnesses = witnesses_of(data_dir)
        assert witnesses, "cofre dev started no witness"
    finally:
        dev.send_signal(stop)
        dev.communicate(timeout=120)
    return witnesses


@pytest.mark.hsm  # `cofre dev` creates a SoftHSM2 token
def test_a_sigterm_during_start_stops_the_witness(tmp_path: Path) -> None:
    assert_gone(_stop_once_starting(tmp_path / "dev", signal.SIGTERM))


@pytest.mark.hsm
def test_a_sigkill_of_cofre_dev_ends_the_witness(tmp_path: Path) -> None:
    """No `finally` runs on SIGKILL: the kernel's parent-death signal ends the witness."""
    assert_gone(_stop_once_starting(tmp_path / "dev", signal.SIGKILL))
