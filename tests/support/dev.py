"""`cofre dev` (what `make run` runs) as a test starts it: a clean environment of the
caller's, a private data directory and a free mTLS port, its output on a text pipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.postgres import free_port

__all__ = ["clean_env", "start_dev"]


def clean_env() -> dict[str, str]:
    """This process's environment without any COFRE_ or SOFTHSM2_ variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}


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
