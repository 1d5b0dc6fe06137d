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

import pkcs11.exceptions as p11e

# PKCS#11 return values a login may answer, as python-pkcs11's exceptions (its own
# mapping is not importable); anything else is taken as the device failing.
_CKR_OK: Final = 0x0
_CKR_USER_ALREADY_LOGGED_IN: Final = 0x100
_CKU_USER: Final = 1
_LOGIN_ERRORS: Final[dict[int, type[p11e.PKCS11Error]]] = {
    0x02: p11e.HostMemory,
    0x05: p11e.GeneralError,
    0x06: p11e.FunctionFailed,
    0x30: p11e.DeviceError,
    0x31: p11e.DeviceMemory,
    0x32: p11e.DeviceRemoved,
    0xA0: p11e.PinIncorrect,
    0xA1: p11e.PinInvalid,
    0xA2: p11e.PinLenRange,
    0xA3: p11e.PinExpired,
    0xA4: p11e.PinLocked,
    0xB0: p11e.SessionClosed,
    0xB3: p11e.SessionHandleInvalid,
    0xE0: p11e.TokenNotPresent,
    0xE1: p11e.TokenNotRecognised,
    0x101: p11e.UserNotLoggedIn,
    0x102: p11e.UserPinNotInitialized,
}
# CK_FUNCTION_LIST: a CK_VERSION (two bytes, padded to a pointer), then one pointer per
# function in the standard's order; C_Login is the 19th.
_C_LOGIN_INDEX: Final = 18
_C_LOGIN = ctypes.CFUNCTYPE(
    ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong
)


class _FunctionList(ctypes.Structure):
    _fields_ = [
        ("major", ctypes.c_ubyte),
        ("minor", ctypes.c_ubyte),
        ("functions", ctypes.c_void_p * (_C_LOGIN_INDEX + 1)),
    ]


class UserLogin:
    """``C_Login`` as the crypto user for sessions of the module at `library`."""

    def __init__(self, library: Path) -> None:
        try:
            module = ctypes.CDLL(str(library))
            get_function_list = module.C_GetFunctionList
        except (OSError, AttributeError):
            # Loaded a moment ago by python-pkcs11, so gone since (a library replaced
            # under a running vault): the caller's "session lost", retried and then 503.
            raise p11e.GeneralError() from None
        get_function_list.restype = ctypes.c_ulong
        get_function_list.argtypes = [ctypes.POINTER(ctypes.POINTER(_FunctionList))]
        functions = ctypes.POINTER(_FunctionList)()
        rv = get_function_list(ctypes.byref(functions))
        if rv != _CKR_OK or ctypes.cast(functions, ctypes.c_void_p).value is None:
            raise _LOGIN_ERRORS.get(rv, p11e.GeneralError)()
        address = functions.contents.functions[_C_LOGIN_INDEX]
        if address is None:
            # No C_Login in the list (a stub or half-done module): a PKCS#11 failure the
            # pool retries and answers 503 for, not a TypeError that escapes it as a 500.
            raise p11e.GeneralError()
        # The module stays loaded while python-pkcs11 holds it; so does `module` here.
        self._module = module
        self._login = _C_LOGIN(address)

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
        if rv not in (_CKR_OK, _CKR_USER_ALREADY_LOGGED_IN):
            raise _LOGIN_ERRORS.get(rv, p11e.GeneralError)()
