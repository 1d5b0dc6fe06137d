"""SDK 5's PIN is ``<CU user name>:<password>`` (pkcs11-pin.html). Until session 35 the
CloudHSM-behaviour shim took any PIN SoftHSM2 took, so a deployment that gave Cofre a
bare password passed every shim-backed test and failed on CloudHSM, with nothing
saying why. AWS names no code for a PIN without the ``:``; the shim answers
``CKR_PIN_INCORRECT`` (our assumption, docs/cloudhsm.md), and Cofre refuses such a PIN
for a CloudHSM library before any ``C_Login`` (no try toward the crypto user's
lockout), saying what the PIN must look like and never the PIN.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pkcs11
import pkcs11.exceptions as p11e
import pytest
from pydantic import SecretStr

from hsm._login import UserLogin
from hsm.errors import HSMAuthFailed
from hsm.provider import HSMProvider
from tests.support.cloudhsm_shim import CloudHSMShim
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import make_vault

BARE = "bare-password-7q"
SHAPE = "<CU user name>:<password>"


def test_the_suite_logs_in_with_a_pin_of_sdk5s_shape(softhsm_token: SoftHSMToken) -> None:
    assert ":" in softhsm_token.user_pin


def test_the_shim_refuses_a_pin_without_a_colon(
    softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim, shim_provider: HSMProvider
) -> None:
    shim_provider.health_check()  # the shim is loaded, and this application logged in
    token = pkcs11.lib(str(cloudhsm_shim.library)).get_token(
        token_label=softhsm_token.label + "-shim"
    )
    session: Any = token.open(rw=True)
    try:
        # Refused on its shape, even with the application already logged in.
        with pytest.raises(p11e.PinIncorrect):
            UserLogin(cloudhsm_shim.library).login(session.handle, BARE)
    finally:
        session.close()


def test_cofre_refuses_a_cloudhsm_pin_without_a_colon_before_logging_in(
    softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim
) -> None:
    provider = HSMProvider(
        cloudhsm_shim.library, softhsm_token.label + "-shim", SecretStr(BARE), softhsm_token.conf
    )
    with pytest.raises(HSMAuthFailed) as caught:
        provider.token_info()
    said = str(caught.value)
    assert SHAPE in said, said
    assert "no ':'" in said, said
    assert BARE not in said
    provider.close()


def test_cofre_hsm_status_says_what_a_cloudhsm_pin_must_look_like(
    softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    env.update(cloudhsm_shim.env())
    env.update(
        COFRE_HSM__LIBRARY=str(cloudhsm_shim.library),
        COFRE_HSM__TOKEN_LABEL=softhsm_token.label + "-shim",
        COFRE_HSM__PIN=BARE,
        COFRE_HSM__SOFTHSM_CONF=str(softhsm_token.conf),
    )
    result = subprocess.run(
        [sys.executable, "-m", "cofre_cli", "hsm", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert SHAPE in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert BARE not in result.stdout + result.stderr


def test_serve_refuses_a_cloudhsm_pin_without_a_colon(
    tmp_path: Path, softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim
) -> None:
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    vault.env.update(cloudhsm_shim.env())
    vault.env["COFRE_HSM__LIBRARY"] = str(cloudhsm_shim.library)
    Path(vault.env["COFRE_HSM__PIN_FILE"]).write_text(BARE)
    result = vault.cofre("serve")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error [configuration_error]: refusing to serve"), result.stderr
    assert SHAPE in result.stderr, result.stderr
    assert BARE not in result.stdout + result.stderr
