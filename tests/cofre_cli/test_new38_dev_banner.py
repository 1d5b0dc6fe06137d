"""`make run`'s banner says only what is true when it is printed.

A newcomer following the README (session 38) pasted the curl call `cofre dev` prints
under "The vault listens on https://127.0.0.1:8443" the moment it appeared: `curl: (7)
Failed to connect ... Couldn't connect to server`. The banner is printed before the
workers start, and they listened 6 to 11 s later on this machine.
"""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.support.dev import clean_env, start_dev


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.mark.hsm  # `cofre dev` creates a SoftHSM2 token
def test_the_dev_banner_does_not_say_it_listens_before_it_does(tmp_path: Path) -> None:
    dev = start_dev(tmp_path / "dev", clean_env(), "--workers", "1")
    try:
        assert dev.stdout is not None
        banner = next((line for line in dev.stdout if line.startswith("The vault ")), "")
        port = int(re.search(r"https://127\.0\.0\.1:(\d+)", banner).group(1))  # type: ignore[union-attr]
        # Session 39: printed once every worker answers (test_new39_dev_ready_banner).
        assert "listens on" in banner, banner
        assert _accepts(port), f"printed {banner.strip()!r}, and nothing accepts"
        # And it does answer, soon (a far bound: fails only on a hang).
        deadline = time.monotonic() + 180
        while not _accepts(port):
            assert time.monotonic() < deadline, "the dev vault never listened"
            time.sleep(0.2)
    finally:
        dev.send_signal(signal.SIGTERM)
        dev.communicate(timeout=120)
