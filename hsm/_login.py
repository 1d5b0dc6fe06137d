"""``C_Login`` on a session the pool already opened, past python-pkcs11.

IN PCI SCOPE (the crypto user's PIN passes through here, never into a message).

Why not python-pkcs11's ``Token.open(user_pin=...)``: it calls ``C_OpenSession`` and then
``C_Login``, and when the login fails it raises without closing the session it opened.
The login fails with ``CKR_USER_ALREADY_LOGGED_IN`` for every pooled session after the
first (login is per application), and with ``CKR_DEVICE_ERROR`` and the like when the HSM
connection drops while the pool reopens: each left one session open for good, toward
CloudHSM's 1,024 sessions per application (limits.html). And a session opened with the
PIN logs the whole application out when it is closed (python-pkcs11 calls ``C_Logout``
first), so dropping one broken session ended the login of every other pooled session;
when that ``C_Logout`` failed on a dead session, ``C_CloseSession`` was never called.
So the pool opens every session without the PIN and logs in here, through the module's
own function list (the same module python-pkcs11 loaded: ``dlopen`` of one path returns
one object), and closes the session itself when the login fails
(tests/reliability/test_hsm_faults.py).
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Final

from hsm._native import C_LOGIN, CKR_OK, ModuleFunctions, error_for

_CKR_USER_ALREADY_LOGGED_IN: Final = 0x100
# The answers a login names as python-pkcs11 would; any other is taken as the device
# failing (`GeneralError`: the pool's "session lost", retried, then 503).
_LOGIN_ANSWERS: Final = frozenset(
    {0x02, 0x05, 0x06, 0x30, 0x31, 0x32, 0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xB0, 0xB3, 0xE0, 0xE1}
    | {0x101, 0x102}
)
_CKU_USER: Final = 1
_CKR_GENERAL_ERROR: Final = 0x05
_C_LOGIN = ctypes.CFUNCTYPE(
    ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong
)


class UserLogin:
    """``C_Login`` as the crypto user for sessions of the module at `library`."""

    def __init__(self, library: Path) -> None:
        self._functions = ModuleFunctions(library)
        self._login = self._functions.function(C_LOGIN, _C_LOGIN)

    def login(self, handle: int, pin: str) -> None:
        """Log session `handle`'s application in as the user; a login already held is
        fine (it is per application). Raises the `pkcs11.exceptions` class of the
        module's answer (ctypes releases the GIL for the call)."""
        secret = pin.encode()
        # ctypes passes the bytes' own buffer (no copy). Both names go before anything is
        # raised: an exception keeps this frame, and error reporters and debuggers print
        # its locals (`HSMAuthFailed` keeps the refused login's error as its context).
        del pin
        rv = self._login(handle, _CKU_USER, secret, len(secret))
        del secret
        if rv not in (CKR_OK, _CKR_USER_ALREADY_LOGGED_IN):
            raise error_for(rv if rv in _LOGIN_ANSWERS else _CKR_GENERAL_ERROR)
