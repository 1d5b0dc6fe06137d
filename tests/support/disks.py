"""A small tmpfs for the disk-full tests: a disk that really fills up.

Mounting one needs root, which CI has: there a failed mount fails the test, and a
developer's non-root run skips it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["small_tmpfs"]


@contextlib.contextmanager
def small_tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """Mount a tmpfs with `options` (``size=16m``...) at `mount` (made here) for the
    block, and unmount it (lazily: a process the test started may still hold it)."""
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs for the disk-full test: {done.stderr}")
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
