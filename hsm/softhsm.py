"""SoftHSM2 token set-up for development and tests (never used with CloudHSM).

IN PCI SCOPE. `softhsm2-util` takes PINs either as command-line flags, which every user
of the machine can read in ``/proc``, or at a terminal prompt. We answer the prompt
through a pseudo-terminal so that no PIN is ever on a command line.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
from pathlib import Path

from hsm.errors import HSMUnavailable

_PROMPT_TIMEOUT_S = 20.0


def write_softhsm_conf(conf_path: Path, token_dir: Path) -> None:
    """Write a softhsm2.conf that keeps tokens in `token_dir` (created 0700)."""
    token_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf_path.write_text(
        f"directories.tokendir = {token_dir.resolve()}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n",
        encoding="utf-8",
    )


def init_softhsm_token(conf_path: Path, label: str, so_pin: str, user_pin: str) -> None:
    """Initialise a new SoftHSM2 token `label` in the free slot of `conf_path`'s directory.

    The PINs are typed into `softhsm2-util`'s prompts through a pseudo-terminal.
    Raises `HSMUnavailable` when softhsm2-util is missing or fails (its output, which
    holds no PIN, is in the message).
    """
    tool = shutil.which("softhsm2-util")
    if tool is None:
        raise HSMUnavailable("softhsm2-util not found: install the softhsm2 package")
    answers = [so_pin, so_pin, user_pin, user_pin]
    env = {**os.environ, "SOFTHSM2_CONF": str(conf_path)}
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child only execs
        os.execve(tool, [tool, "--init-token", "--free", "--label", label], env)  # noqa: S606 - fixed argv, no shell
    output = b""
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], _PROMPT_TIMEOUT_S)
            if not ready:
                break
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if chunk.rstrip().endswith(b":") and answers:
                os.write(fd, answers.pop(0).encode() + b"\n")
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or answers:
        text = output.decode("utf-8", "replace").replace("*", "")
        raise HSMUnavailable(f"softhsm2-util could not initialise token {label!r}: {text.strip()}")
