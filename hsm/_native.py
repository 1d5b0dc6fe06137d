"""The PKCS#11 module's own function list, for the few calls Cofre makes past
python-pkcs11 (`hsm._login`, `hsm._hmac`).

IN PCI SCOPE (the module python-pkcs11 already loaded: ``dlopen`` of one path returns
one object, so these calls reach the same library state, sessions and login).
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any, Final

import pkcs11.exceptions as p11e

CKR_OK: Final = 0x0
# PKCS#11 return values these calls may answer, as python-pkcs11's exceptions (its own
# mapping is an inline Cython function, not importable). Any other value is the caller's
# `unknown` class: a login takes it as the device failing (`GeneralError`, which the
# pool treats as a lost session); a signature as python-pkcs11 does (a bare
# `PKCS11Error`, "the token refused the operation").
_ERRORS: Final[dict[int, type[p11e.PKCS11Error]]] = {
    0x02: p11e.HostMemory,
    0x05: p11e.GeneralError,
    0x06: p11e.FunctionFailed,
    0x07: p11e.ArgumentsBad,
    0x20: p11e.DataInvalid,
    0x21: p11e.DataLenRange,
    0x30: p11e.DeviceError,
    0x31: p11e.DeviceMemory,
    0x32: p11e.DeviceRemoved,
    0x50: p11e.FunctionCancelled,
    0x54: p11e.FunctionNotSupported,
    0x60: p11e.KeyHandleInvalid,
    0x62: p11e.KeySizeRange,
    0x63: p11e.KeyTypeInconsistent,
    0x70: p11e.MechanismInvalid,
    0x71: p11e.MechanismParamInvalid,
    0x82: p11e.ObjectHandleInvalid,
    0x90: p11e.OperationActive,
    0x91: p11e.OperationNotInitialized,
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
# What a module that cannot hand over its function list may answer and is named as
# python-pkcs11 names it (PKCS#11 2.40, C_GetFunctionList); all are "session lost".
_MODULE_FAILURES: Final = frozenset({0x02, 0x05, 0x06})
# CK_FUNCTION_LIST: a CK_VERSION (two bytes, padded to a pointer), then one pointer per
# function in the standard's order (PKCS#11 2.40, section 5.16). Only as far as the
# highest index used here is declared; the module's list is longer.
C_LOGIN: Final = 18
C_SIGN_INIT: Final = 42
C_SIGN: Final = 43


class _FunctionList(ctypes.Structure):
    _fields_ = [
        ("major", ctypes.c_ubyte),
        ("minor", ctypes.c_ubyte),
        ("functions", ctypes.c_void_p * (C_SIGN + 1)),
    ]


def error_for(rv: int, unknown: type[p11e.PKCS11Error] = p11e.GeneralError) -> p11e.PKCS11Error:
    """The `pkcs11.exceptions` instance python-pkcs11 raises for return value `rv`, or
    an `unknown` for a value not listed here."""
    return _ERRORS.get(rv, unknown)()


class ModuleFunctions:
    """The function list of the module at `library`, loaded by python-pkcs11 already."""

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
        if rv != CKR_OK or ctypes.cast(functions, ctypes.c_void_p).value is None:
            # The module failing whatever it says (even CKR_ARGUMENTS_BAD, for a pointer
            # that is right): the callers' "session lost", as before this module existed.
            raise error_for(rv) if rv in _MODULE_FAILURES else p11e.GeneralError()
        # The module stays loaded while python-pkcs11 holds it; so does `module` here.
        self._module = module
        self._functions = functions

    def function(self, index: int, prototype: Any) -> Any:
        """Function `index` of the list as a ctypes `prototype` (ctypes releases the GIL
        for each call). Raises `GeneralError` when the module lists none there (a stub or
        half-done module): a PKCS#11 failure the pool retries and answers 503 for, not a
        TypeError that escapes it as a 500."""
        address = self._functions.contents.functions[index]
        if address is None:
            raise p11e.GeneralError()
        return prototype(address)
