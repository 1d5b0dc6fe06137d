"""Session handling: one logged-in session to one token, shared safely by threads.

IN PCI SCOPE. The provider (`hsm.provider`) builds its operations on this class; nothing
else opens sessions.

Concurrency. python-pkcs11 initialises the library with ``C_Initialize(NULL)``, so
SoftHSM2 runs without internal locking while python-pkcs11 releases the GIL during each
call: two threads on two sessions crash it (see shared/TOOLCHAIN.md). The provider
therefore holds **one** session and serialises every call with a lock. Measured on two
cores, two threads under a lock were no faster than one, so a larger pool would buy
nothing with SoftHSM; with CloudHSM, scale out with more vault processes, each with its
own provider (CloudHSM's client load-balances sessions across the cluster's HSMs).

Recovery. A call that fails because the session, token or library went away drops the
session, reopens it (re-initialising the library when needed) and retries once; when the
retry fails too the caller gets `HSMUnavailable`, and the next call tries again. Nothing
is cached across a reopen except the provider's configuration.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import pkcs11
import pkcs11.exceptions as p11e
from pkcs11 import ObjectClass
from pydantic import SecretStr

from hsm.errors import (
    HSMAuthFailed,
    HSMError,
    HSMKeyNotExtractable,
    HSMKeyNotFound,
    HSMMechanismUnsupported,
    HSMOperationFailed,
    HSMUnavailable,
)
from hsm.mechanisms import WrapMechanisms

T = TypeVar("T")

# Failures after which the session (and maybe the library) must be rebuilt.
_CONNECTION_ERRORS: Final = (
    p11e.SessionClosed,
    p11e.SessionHandleInvalid,
    p11e.DeviceRemoved,
    p11e.DeviceError,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.GeneralError,
    p11e.UserNotLoggedIn,
    p11e.ObjectHandleInvalid,
    p11e.KeyHandleInvalid,
    p11e.FunctionFailed,
    p11e.DeviceMemory,
    p11e.HostMemory,
)
_AUTH_ERRORS: Final = (
    p11e.PinIncorrect,
    p11e.PinInvalid,
    p11e.PinLenRange,
    p11e.PinLocked,
    p11e.PinExpired,
    p11e.UserPinNotInitialized,
)


class TokenSession:
    """The session side of `hsm.provider.HSMProvider`: library, login, lock, recovery,
    and the translation of every PKCS#11 error into `hsm.errors`."""

    def __init__(
        self,
        library: Path,
        token_label: str,
        pin: SecretStr,
        softhsm_conf: Path | None = None,
    ) -> None:
        self._library_path = library
        self._token_label = token_label
        self._pin = pin
        self._softhsm_conf = softhsm_conf
        self._lock = threading.RLock()
        self._lib: Any = None
        self._session: Any = None
        self._objects: dict[tuple[str, int], Any] = {}
        self._mechanisms: frozenset[int] | None = None
        self._wrap: WrapMechanisms | None = None
        # Called with (operation, milliseconds) after every call; the API feeds metrics.
        self.observer: Callable[[str, float], None] | None = None

    def __repr__(self) -> str:
        return f"HSMProvider(library={str(self._library_path)!r}, token={self._token_label!r})"

    # ------------------------------------------------------------------ session
    def _load_library(self) -> Any:
        if self._softhsm_conf is not None:
            # SoftHSM reads SOFTHSM2_CONF once, when python-pkcs11 first loads the library
            # in this process (it caches one library object per path).
            os.environ["SOFTHSM2_CONF"] = str(self._softhsm_conf)
        if not self._library_path.is_file():
            raise HSMUnavailable(f"PKCS#11 library not found: {self._library_path}")
        try:
            return pkcs11.lib(str(self._library_path))
        except (RuntimeError, OSError, p11e.PKCS11Error) as exc:
            raise HSMUnavailable(
                f"cannot load PKCS#11 library {self._library_path}: {type(exc).__name__}"
            ) from None

    def _open_session(self) -> Any:
        if self._lib is None:
            self._lib = self._load_library()
        try:
            token = self._lib.get_token(token_label=self._token_label)
        except p11e.NoSuchToken:
            raise HSMUnavailable(
                f"no token labelled {self._token_label!r} in {self._library_path}"
            ) from None
        except p11e.MultipleTokensReturned:
            raise HSMUnavailable(
                f"more than one token labelled {self._token_label!r}; labels must be unique"
            ) from None
        pin = self._pin.get_secret_value()
        try:
            return token.open(rw=True, user_pin=pin)
        except p11e.UserAlreadyLoggedIn:
            # Login is per application: another provider in this process already logged
            # this token in, and every session of the process shares that login.
            return token.open(rw=True)
        except _AUTH_ERRORS as exc:
            raise HSMAuthFailed(
                f"token {self._token_label!r} refused the user PIN ({type(exc).__name__})"
            ) from None

    def _drop_session(self) -> None:
        self._objects.clear()
        self._mechanisms = None
        self._wrap = None
        session, self._session = self._session, None
        if session is not None:
            # A failing close means it is already gone, which is why we are dropping it.
            with contextlib.suppress(p11e.PKCS11Error):
                session.close()

    def _reinitialize(self) -> None:
        self._drop_session()
        if self._lib is not None:
            try:
                self._lib.reinitialize()
            except p11e.PKCS11Error:
                self._lib = None

    def _run(self, operation: Callable[[Any], T], *, retry: bool = True, name: str = "call") -> T:
        """Run `operation(session)` under the lock, translating every PKCS#11 error."""
        started = time.perf_counter()
        try:
            return self._run_locked(operation, retry=retry)
        finally:
            if self.observer is not None:
                self.observer(name, (time.perf_counter() - started) * 1000)

    def _run_locked(self, operation: Callable[[Any], T], *, retry: bool) -> T:
        with self._lock:
            attempts = 2 if retry else 1
            for attempt in range(1, attempts + 1):
                try:
                    if self._session is None:
                        self._session = self._open_session()
                    return operation(self._session)
                except HSMError:
                    raise
                except _AUTH_ERRORS as exc:
                    self._drop_session()
                    raise HSMAuthFailed(
                        f"token {self._token_label!r} refused the user PIN ({type(exc).__name__})"
                    ) from None
                except _CONNECTION_ERRORS as exc:
                    if attempt == 1:
                        self._drop_session()
                    else:
                        self._reinitialize()
                    if attempt == attempts:
                        raise HSMUnavailable(
                            f"token {self._token_label!r} is not reachable ({type(exc).__name__})"
                        ) from None
                except p11e.MechanismInvalid as exc:
                    raise HSMMechanismUnsupported(
                        f"token {self._token_label!r} does not support a mechanism this "
                        f"operation needs ({type(exc).__name__})"
                    ) from None
                except (p11e.AttributeSensitive, p11e.KeyUnextractable) as exc:
                    raise HSMKeyNotExtractable(
                        f"the token refused to export the key ({type(exc).__name__})"
                    ) from None
                except p11e.PKCS11Error as exc:
                    raise HSMOperationFailed(
                        f"the token refused the operation ({type(exc).__name__})"
                    ) from None
            raise AssertionError("unreachable")  # pragma: no cover

    def _find(self, session: Any, label: str, object_class: ObjectClass) -> Any:
        key = (label, int(object_class))
        cached = self._objects.get(key)
        if cached is not None:
            return cached
        try:
            obj = session.get_key(object_class=object_class, label=label)
        except p11e.NoSuchKey:
            raise HSMKeyNotFound(f"no {object_class.name} key labelled {label!r}") from None
        except p11e.MultipleObjectsReturned:
            raise HSMOperationFailed(f"more than one key labelled {label!r}") from None
        self._objects[key] = obj
        return obj

    def _find_secret(self, session: Any, label: str) -> Any:
        return self._find(session, label, ObjectClass.SECRET_KEY)

    def close(self) -> None:
        """Close the session. The provider reopens it on the next call."""
        with self._lock:
            self._drop_session()
