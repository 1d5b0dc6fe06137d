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
import json
import os
import subprocess
import sys
from pathlib import Path

from cofre.settings import DEFAULT_SOFTHSM_LIBRARY
from hsm._login import UserLogin
from hsm.provider import HSMProvider
from tests.support.cloudhsm_shim import CloudHSMShim, Fault, ShimFaults
from tests.support.softhsm import SoftHSMToken, create_token

ROOT = Path(__file__).resolve().parents[2]


def _probe(*args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "verifier" / "src")])
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.login_probe", *args],
        capture_output=True,
        text=True,
        timeout=300,  # a hang, never a duration
        check=False,
        env=environment,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    parsed: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return parsed


def test_a_refused_pin_is_left_in_no_frame(tmp_path: Path) -> None:
    """The PIN a token refused (often a near miss of the right one, or the one before a
    change) is in no frame's locals reachable from `HSMAuthFailed`: not in its traceback,
    nor in that of the PKCS#11 error it replaced, which error reporters and debuggers
    that show locals would print."""
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
