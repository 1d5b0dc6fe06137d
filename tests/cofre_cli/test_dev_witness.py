"""`cofre dev` (what `make run` runs) starts a local witness process beside the vault,
and the vault's heads get cosigned: `cofre audit verify --witness-key` passes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.dev import clean_env, start_dev

COFRE = [sys.executable, "-m", "cofre_cli"]


@pytest.mark.hsm  # `cofre dev` creates a SoftHSM2 token
def test_make_run_exercises_witnessed_checkpoints(tmp_path: Path) -> None:
    env = clean_env()
    data_dir = tmp_path / "dev"
    dev = start_dev(data_dir, env)
    try:
        vkey = data_dir / "witness" / "witness.vkey"
        env["COFRE_CONFIG"] = str(data_dir / "cofre.toml")
        verified = None
        for _ in range(120):  # polls the running vault; no verdict depends on the clock
            if dev.poll() is not None:
                break
            if vkey.exists():
                verified = subprocess.run(
                    [*COFRE, "audit", "verify", "--witness-key", str(vkey)],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                if verified.returncode == 0:
                    break
            time.sleep(0.5)
        assert verified is not None
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "newest head has a quorum" in verified.stdout
        assert "cosigned" in (data_dir / "witness" / "witness.log").read_text()
    finally:
        dev.send_signal(signal.SIGTERM)
        output, _ = dev.communicate(timeout=60)
    assert "A local witness" in output
    # Another data directory than the CLI finds by itself: the hint names its config.
    assert f"COFRE_CONFIG={data_dir / 'cofre.toml'} cofre audit verify" in output
    # What `cofre dev` creates is private from the start (review 41: a warning listed
    # the files it had just written 0644 and then tightened).
    assert "permissions tightened" not in output
    # The witness is its own key and state, beside (never inside) the vault's files.
    assert (data_dir / "witness" / "witness.key").stat().st_mode & 0o077 == 0
    assert (data_dir / "witness" / "state.sqlite3").exists()
