"""`make run` says the vault listens only once every worker answers (session 39).

Session 38 found the banner printed before the workers started (a pasted curl got
``Couldn't connect to server`` for up to 11 s) and reworded it "starting ... once it
answers". Now the supervisor prints "The vault listens on ..." when each worker has told
it (over a pipe) that its mTLS listener accepts and its readiness check passes. The
proof is the newcomer's: the curl call the banner prints, run exactly as printed the
moment the line appears, tokenizes the test card; with one, two and three workers (a
connection reaches whichever worker the kernel picks), several times each.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.dev import clean_env, start_dev


def _pasted_curl(lines: list[str]) -> str:
    """The curl call the banner prints, its continuation lines joined as a shell would."""
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("curl "))
    command = []
    for line in lines[start:]:
        command.append(line.strip().removesuffix("\\"))
        if not line.rstrip().endswith("\\"):
            break
    return " ".join(command)


@pytest.mark.hsm  # `cofre dev` creates a SoftHSM2 token
@pytest.mark.parametrize("workers", ["1", "2", "3"], ids=["one", "two", "three"])
def test_the_pasted_curl_tokenizes_the_moment_the_banner_says_it_listens(
    tmp_path: Path, workers: str
) -> None:
    dev = start_dev(tmp_path / "dev", clean_env(), "--workers", workers)
    try:
        assert dev.stdout is not None
        seen: list[str] = []
        # A vault that dies first ends the output, so this loop ends either way.
        for line in dev.stdout:
            seen.append(line)
            if line.startswith("The vault "):
                break
        banner = seen[-1] if seen else ""
        assert banner.startswith("The vault listens on https://127.0.0.1:"), "".join(seen)
        rest = [next(dev.stdout) for _ in range(6)]
        curl = _pasted_curl(rest)
        # At once, and each several times: every connection may reach another worker.
        for _ in range(6):
            done = subprocess.run(
                ["bash", "-c", curl + " --silent --show-error --fail-with-body"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, (curl, done.stderr, done.stdout)
            assert json.loads(done.stdout)["format"] == "pan_bin6_last4"
    finally:
        dev.send_signal(signal.SIGTERM)
        dev.communicate(timeout=120)
