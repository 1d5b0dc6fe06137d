"""The flags every headless Chromium of the suite runs with.

They keep it off the network (the machine has none, and a browser that phones home
would wait on it) and out of the home directory: its profile is the test's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

__all__ = ["OFFLINE_FLAGS", "offline_flags"]

OFFLINE_FLAGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def offline_flags(profile: Path) -> list[str]:
    """`OFFLINE_FLAGS`, with `profile` as the user data directory."""
    return [*OFFLINE_FLAGS, f"--user-data-dir={profile}"]
