"""`cofre dev` stopped by SIGTERM between its witness's start and its `try`.

Review of session 33: the SIGTERM handler (`_exit_on_signal`) turned the signal into
`SystemExit`, but the `try` whose `finally` stops the witness began only at `serve`:
a stop while `cofre dev` pinned handovers, closed its provider, read its PKI or printed
its banner left the `cofre witness serve` process running. The banner is where this
test stops it: the output pipe is full, so the write that prints it waits.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.dev import assert_gone, clean_env, witnesses_of
from tests.support.postgres import free_port

_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), named from Python 3.10 on some builds


def _dev_command(data_dir: Path, port: int, *options: str) -> list[str]:
    return [
        *(sys.executable, "-m", "cofre_cli", "dev", "--data-dir", str(data_dir)),
        *("--port", str(port), "--workers", "1", *options),
    ]


def _waits_on_its_output(pid: int) -> bool:
    try:
        return "pipe_write" in (Path(f"/proc/{pid}/task/{pid}/wchan")).read_text()
    except OSError:
        return False


def _fill(write_end: int) -> None:
    """Fill the pipe of `write_end` without ever waiting, through a description of its
    own: O_NONBLOCK set on `write_end` itself would be set on the child's stdout too
    (one open file description), and its writes would fail instead of waiting."""
    descriptor = os.open(f"/proc/self/fd/{write_end}", os.O_WRONLY | os.O_NONBLOCK)
    try:
        for size in (4096, 1):  # then byte by byte, for the room a page did not take
            with contextlib.suppress(BlockingIOError):
                while True:
                    os.write(descriptor, b"#" * size)
    finally:
        os.close(descriptor)


@pytest.mark.hsm  # `cofre dev` creates a SoftHSM2 token
def test_a_sigterm_while_the_banner_waits_stops_the_witness(tmp_path: Path) -> None:
    data_dir, port, env = tmp_path / "dev", free_port(), clean_env()
    # First run: the environment, token and keys, so the next one prints nothing of its
    # own between its witness's start and its banner.
    first = subprocess.run(
        _dev_command(data_dir, port, "--check"),
        check=False,
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    read_end, write_end = os.pipe()
    fcntl.fcntl(read_end, _F_SETPIPE_SZ, 4096)
    dev = subprocess.Popen(
        _dev_command(data_dir, port), env=env, stdout=write_end, stderr=write_end
    )
    drained: list[bytes] = []
    witnesses: list[int] = []
    try:
        # Read its output until its witness is up, then fill the pipe: the next write
        # (the banner) waits.
        os.set_blocking(read_end, False)
        for _ in range(6000):  # bounded: only a dev that never starts its witness ends it
            with contextlib.suppress(BlockingIOError):
                drained.append(os.read(read_end, 1 << 16))
            witnesses = witnesses_of(data_dir)
            if witnesses or dev.poll() is not None:
                break
            time.sleep(0.05)
        assert witnesses, b"".join(drained)[-2000:]
        _fill(write_end)
        for _ in range(6000):  # bounded: a hang ends it, not a slow machine
            if _waits_on_its_output(dev.pid) or dev.poll() is not None:
                break
            time.sleep(0.05)
        assert _waits_on_its_output(dev.pid), "cofre dev never wrote after its witness"
    finally:
        os.close(write_end)
        dev.send_signal(signal.SIGTERM)
        os.set_blocking(read_end, True)
        reader = threading.Thread(target=lambda: drained.append(_read_all(read_end)))
        reader.start()
        dev.wait(timeout=120)
        reader.join(timeout=120)
        os.close(read_end)
    assert_gone(witnesses)


def _read_all(descriptor: int) -> bytes:
    chunks = []
    while chunk := os.read(descriptor, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)
