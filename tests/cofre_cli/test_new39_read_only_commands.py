"""A command that only reads never creates the store it reads (session 39).

A newcomer ran `cofre audit head` from their home directory (no configuration): it
failed with the "no configuration found" hint, and left `./.cofre-dev/cofre.sqlite3`
(and its writer lock) behind, an empty database in whatever directory they stood in.
Run from there again, the next command found that directory and believed it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cofre_cli._shared import UNCONFIGURED_HINT
from tests.support.dev import clean_env

_READ_ONLY = [
    ["audit", "head"],
    ["audit", "prove", "--index", "0"],
    ["db", "status"],
]


@pytest.mark.parametrize("command", _READ_ONLY, ids=" ".join)
def test_a_read_only_command_outside_a_checkout_creates_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    root = Path(__file__).resolve().parents[2]
    env = clean_env()
    env["PYTHONPATH"] = f"{root}:{root / 'verifier' / 'src'}"
    done = subprocess.run(
        [sys.executable, "-m", "cofre_cli", *command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert UNCONFIGURED_HINT in " ".join(done.stderr.split()), done.stderr
    assert "cofre db migrate" in done.stderr  # what creates the store, named
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == []
