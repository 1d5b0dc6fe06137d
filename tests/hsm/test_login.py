"""Review 31d: the pool's own ``C_Login`` (`hsm._login`), attacked.

Each probe runs in a process of its own (tests/support/login_probe.py), so that the
token starts logged out (login is per application) and the CloudHSM shim reads its
fault file at load: a refused PIN is left in no frame of the exception the caller gets;
many threads logging in at once while faults fail logins, kill sessions and end the
login never run a call on a session that lost its login, and leave no session open; the
login cached before a re-initialisation of the library works after it; and the function
called is the module's ``C_Login``."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pkcs11.exceptions as p11e
import pytest

from cofre.settings import DEFAULT_SOFTHSM_LIBRARY
from hsm._login import UserLogin
from hsm.provider import HSMProvider
from tests.support.cloudhsm_shim import PKCS11_INCLUDE, CloudHSMShim, Fault, ShimFaults
from tests.support.probes import run_probe
from tests.support.softhsm import SoftHSMToken, create_token


def _probe(*args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    return run_probe("tests.support.login_probe", *args, env=env)


def test_a_refused_pin_is_left_in_no_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PIN a token refused (often a near miss of the right one, or the one before a
    change) is in no frame's locals reachable from `HSMAuthFailed`: not in its traceback,
    nor in that of the PKCS#11 error it replaced, which error reporters and debuggers
    that show locals would print."""
    # `create_token` points this process's SOFTHSM2_CONF at the new token: put back
    # afterwards, or every later test (and vault process) saw this one's (CI, session 31).
    monkeypatch.setenv("SOFTHSM2_CONF", os.environ.get("SOFTHSM2_CONF", ""))
    token = create_token(tmp_path / "softhsm")
    refused = "not-" + token.user_pin
    result = _probe(
        "wrong-pin", str(DEFAULT_SOFTHSM_LIBRARY), str(token.conf), token.label, refused
    )
    assert result == {"error": "HSMAuthFailed", "holding": []}


def test_threads_log_in_at_once_while_faults_end_the_login(
    tmp_path: Path,
    softhsm_token: SoftHSMToken,
    cloudhsm_shim: CloudHSMShim,
    shim_provider: HSMProvider,
) -> None:
    """Eight threads start at once on a logged-out token with a pool of four, while the
    first three logins fail, two calls end the login and kill every session (an HSM
    replaced) and four kill their own session: every call answers or raises
    `HSMUnavailable` (never another error, never on a session that lost its login), and
    once the faults are spent every call answers and no session is left open."""
    assert shim_provider.has_key("cofre-fp-v1")
    faults = ShimFaults(tmp_path / "faults")
    faults.set(
        Fault("DEVICE_ERROR", ("C_Login",), 3),
        Fault("TOKEN_NOT_PRESENT", ("C_SignInit",), 2),
        Fault("SESSION_HANDLE_INVALID", ("C_Sign",), 4),
    )
    result = _probe(
        "race",
        str(cloudhsm_shim.library),
        str(softhsm_token.conf),
        softhsm_token.label + "-shim",
        softhsm_token.user_pin,
        "8",
        "6",
        env=cloudhsm_shim.env(fault_file=faults.path),
    )
    assert result["hung"] == 0
    during = result["during"]
    assert isinstance(during, dict)
    assert set(during) <= {"ok", "HSMUnavailable"}, during
    assert result["after"] == {"ok": 8}
    assert faults.report().injected == 9
    assert (faults.report().zombies, faults.report().live) == (0, 0)


def test_the_cached_login_survives_a_reinitialisation(
    tmp_path: Path,
    softhsm_token: SoftHSMToken,
    cloudhsm_shim: CloudHSMShim,
    shim_provider: HSMProvider,
) -> None:
    """The pool keeps the ``C_Login`` it found once; after the HSM went away long
    enough for the pool to finalise and initialise the library again, that login still
    works: the module stays loaded, so its function list and ``C_Login`` stay where
    they were."""
    assert shim_provider.has_key("cofre-fp-v1")
    faults = ShimFaults(tmp_path / "faults")
    faults.clear()
    result = _probe(
        "reinit",
        str(cloudhsm_shim.library),
        str(softhsm_token.conf),
        softhsm_token.label + "-shim",
        softhsm_token.user_pin,
        str(faults.path),
        env=cloudhsm_shim.env(fault_file=faults.path),
    )
    assert result == {"steps": ["ok", "HSMUnavailable", "ok", "ok"]}


def test_the_login_called_is_the_modules_c_login() -> None:
    """Index 18 of the function list is ``C_Login`` (PKCS#11 2.40 and 3.x keep that
    order in the ``CK_FUNCTION_LIST`` that ``C_GetFunctionList`` returns): SoftHSM2
    exports its functions too, so the two addresses must be the same."""
    login = UserLogin(DEFAULT_SOFTHSM_LIBRARY)
    exported = ctypes.CDLL(str(DEFAULT_SOFTHSM_LIBRARY)).C_Login
    called = ctypes.cast(login._login, ctypes.c_void_p).value
    assert called is not None
    assert called == ctypes.cast(exported, ctypes.c_void_p).value


# A module whose function list has no C_Login (or no list at all): what a stub, a
# half-implemented or a 3.x-only module may hand back from C_GetFunctionList.
_HOLLOW_MODULE = r"""
#include <stddef.h>
#include <p11-kit/pkcs11.h>
static CK_FUNCTION_LIST hollow = {{2, 40}};
CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
#ifdef NO_LIST
    (void)list;
    return CKR_GENERAL_ERROR;
#else
    *list = &hollow;
    return CKR_OK;
#endif
}
"""


def _hollow_module(directory: Path, *defines: str) -> Path:
    gcc = shutil.which("gcc")
    assert gcc is not None, "gcc is needed: run `make test-deps`"
    source = directory / "hollow.c"
    source.write_text(_HOLLOW_MODULE)
    library = directory / f"libhollow{''.join(defines)}.so"
    subprocess.run(
        [
            gcc,
            "-shared",
            "-fPIC",
            f"-I{PKCS11_INCLUDE}",
            *(f"-D{d}" for d in defines),
            str(source),
            "-o",
            str(library),
        ],
        check=True,
        timeout=120,
    )
    return library


def test_a_module_without_c_login_is_a_pkcs11_error(tmp_path: Path) -> None:
    """A function list whose C_Login slot is empty, or no list at all, is a PKCS#11
    failure (the pool's "session lost": retried, then 503), never a TypeError that
    escapes the pool's translation as a 500, and never a call through a null pointer."""
    with pytest.raises(p11e.PKCS11Error):
        UserLogin(_hollow_module(tmp_path))
    with pytest.raises(p11e.PKCS11Error):
        UserLogin(_hollow_module(tmp_path, "NO_LIST"))


def test_a_refused_pin_is_not_tried_again(
    softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim, shim_provider: HSMProvider
) -> None:
    """CloudHSM locks a crypto user out after five refused logins, on every node, until a
    crypto officer resets the password. A node deployed with a stale PIN, called by
    eight threads, must not spend them: each call fails `HSMAuthFailed`, and a node with
    the right PIN still logs in afterwards (the shim's COFRE_SHIM_LOGIN_LOCKOUT)."""
    assert shim_provider.has_key("cofre-fp-v1")
    result = _probe(
        "lockout",
        str(cloudhsm_shim.library),
        str(softhsm_token.conf),
        softhsm_token.label + "-shim",
        softhsm_token.user_pin,
        "stale-" + softhsm_token.user_pin,
        env={**cloudhsm_shim.env(), "COFRE_SHIM_LOGIN_LOCKOUT": "5"},
    )
    assert result == {"wrong": {"HSMAuthFailed": 24}, "right": "ok"}
