"""The session pool's small parts (moved out of `hsm.session`): one pooled session, the
two failures `hsm.session` retries, and closing a session that may already be gone.

IN PCI SCOPE.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pkcs11.exceptions as p11e


class _Pooled:
    """One open session and the key objects found on it (handles are per session)."""

    __slots__ = ("epoch", "objects", "session")

    def __init__(self, session: Any, epoch: int) -> None:
        self.session = session
        self.objects: dict[tuple[str, int], Any] = {}
        self.epoch = epoch


class _SessionLost(Exception):
    """The session, token or library went away during a call (retried, then translated)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _KeyHandleRefused(Exception):
    """The token refused a key or object handle (retried on a fresh lookup)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _close_quietly(session: Any) -> None:
    # A failing close means the session is already gone, which is why we are dropping it.
    with contextlib.suppress(p11e.PKCS11Error):
        session.close()
