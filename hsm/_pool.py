"""The session pool's small parts (moved out of `hsm.session`): one pooled session, the
two failures `hsm.session` retries, closing a session that may already be gone, and the
translation of every PKCS#11 error into `hsm.errors` (or one of those two).

IN PCI SCOPE.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Final

import pkcs11.exceptions as p11e

from hsm.errors import (
    HSMAuthFailed,
    HSMKeyNotExtractable,
    HSMMechanismUnsupported,
    HSMOperationFailed,
)

# Failures after which the session (and maybe the library) must be rebuilt.
CONNECTION_ERRORS: Final = (
    p11e.SessionClosed,
    p11e.SessionHandleInvalid,
    p11e.DeviceRemoved,
    p11e.DeviceError,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.GeneralError,
    p11e.UserNotLoggedIn,
    p11e.FunctionFailed,
    p11e.OperationActive,
    p11e.DeviceMemory,
    p11e.HostMemory,
)
# What a busy (throttled) CloudHSM answers once the SDK's own retries are spent
# (troubleshoot-hsm-throttling.html names both: "busy errors map to CKR_FUNCTION_FAILED"
# and "busy errors map to CKR_OPERATION_ACTIVE errors"): a call is dropped and retried
# once on a fresh session as on a lost one, but the library is not re-initialised for
# it, which would add load where the HSM asks for less (`hsm.session`). The session is
# dropped rather than kept: what the SDK leaves active on it is not documented, and a
# session with an operation left open fails every later one (review 32). Until session
# 36 `OperationActive` was a refused operation (`HSMOperationFailed`, at once), which a
# held security code's decryption took for a code altered (`integrity_error`).
# `FunctionFailed` is also what SDK 5 answers for a read-only session.
# `hsm._describe._AttributesUnread`: a key's read came back without what the token must
# report (a throttled read python-pkcs11 lets through with no error, hsm38b).
BUSY_ERRORS: Final = frozenset({"FunctionFailed", "OperationActive", "_AttributesUnread"})
# A handle the token no longer (or not yet) honours: a key found earlier and since
# destroyed, or a new CloudHSM key not yet on a quorum of HSMs. The session is fine.
_KEY_HANDLE_ERRORS: Final = (p11e.ObjectHandleInvalid, p11e.KeyHandleInvalid)
_AUTH_ERRORS: Final = (
    p11e.PinIncorrect,
    p11e.PinInvalid,
    p11e.PinLenRange,
    p11e.PinLocked,
    p11e.PinExpired,
    p11e.UserPinNotInitialized,
)


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


class _PoolShrank(Exception):
    """The library a call just loaded is SoftHSM2 under another name (`hsm.session`'s
    `_load`): the pool is one session now, and this call borrowed a place beyond it
    before the library said so. It gives the place back and waits for the one."""


class _PoolAnswering(Exception):
    """A readiness check found every session busy and the token answering their calls
    meanwhile (`hsm.session`): the HSM works, so the check passes without a call."""


class _CheckCall:
    """The readiness check's own call, run in a thread of its own (`hsm.session`): which
    call (its name), when it started, whether it has ended, and its result or how it
    failed (result None: every session was busy with calls that answered)."""

    __slots__ = ("done", "failure", "name", "result", "started")

    def __init__(self, name: str, started: float) -> None:
        self.name = name
        self.started = started
        self.done = threading.Event()
        self.result: object = None
        self.failure: BaseException | None = None


def _close_quietly(session: Any) -> None:
    # A failing close means the session is already gone, which is why we are dropping it.
    with contextlib.suppress(p11e.PKCS11Error):
        session.close()


def _translated(exc: p11e.PKCS11Error, token_label: str) -> Exception:
    """The exception that stands for PKCS#11 error `exc` (`hsm.errors`, or one of this
    module's `_SessionLost` and `_KeyHandleRefused`)."""
    if isinstance(exc, _AUTH_ERRORS):
        return HSMAuthFailed(f"token {token_label!r} refused the user PIN ({type(exc).__name__})")
    if isinstance(exc, CONNECTION_ERRORS):
        return _SessionLost(type(exc).__name__)
    if isinstance(exc, _KEY_HANDLE_ERRORS):
        return _KeyHandleRefused(type(exc).__name__)
    if isinstance(exc, p11e.MechanismInvalid):
        return HSMMechanismUnsupported(
            f"token {token_label!r} does not support a mechanism this "
            f"operation needs ({type(exc).__name__})"
        )
    if isinstance(exc, (p11e.AttributeSensitive, p11e.KeyUnextractable)):
        return HSMKeyNotExtractable(f"the token refused to export the key ({type(exc).__name__})")
    return HSMOperationFailed(f"the token refused the operation ({type(exc).__name__})")
