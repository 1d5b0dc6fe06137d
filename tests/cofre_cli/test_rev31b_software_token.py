"""Review 31b: `cofre serve`'s software-token check judges a PKCS#11 library that is
there but does not initialise by its file name alone (with a warning), so that a
networked HSM whose cluster is down at a rollout does not crash-loop every pod. SoftHSM2
copied under another name (``libvendor.so``) whose token directory is not there yet (a
volume mounted after the container starts) fails ``C_Initialize`` the same way: it
passed the check, and once the directory came the vault's own provider initialised it
and served from a software token. Fixed: `cofre serve` (unless
``COFRE_INSECURE__ALLOW_SOFTWARE_HSM``) builds its providers refusing a library that
says it is SoftHSM whenever a session opens, so such a node stays unready, naming it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import SecretStr

from cofre.settings import DEFAULT_SOFTHSM_LIBRARY, Settings
from cofre_cli._production import _software_token, refusing_software_tokens
from hsm.errors import HSMUnavailable
from hsm.provider import provider_from_settings
from tests.support.softhsm import SoftHSMToken, settled_health_check


def test_a_renamed_softhsm2_that_initialises_only_later_serves_nothing(
    tmp_path: Path, softhsm_token: SoftHSMToken, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm_token.conf))  # restored afterwards
    renamed = tmp_path / "libvendor.so"
    shutil.copyfile(DEFAULT_SOFTHSM_LIBRARY, renamed)
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'not-mounted-yet'}\n")
    settings = Settings.model_validate(
        {
            "hsm": {
                "library": renamed,
                "token_label": softhsm_token.label,
                "pin": SecretStr(softhsm_token.user_pin),
                "softhsm_conf": conf,
            }
        }
    )
    # At start the library does not initialise: judged by its name, with a warning.
    assert _software_token(settings, allowed_anyway=False) is None
    # The volume arrives: the same conf now finds the token directory.
    conf.write_text(f"directories.tokendir = {softhsm_token.token_dir}\n")
    provider = provider_from_settings(refusing_software_tokens(settings).hsm)
    try:
        with pytest.raises(HSMUnavailable, match="says it is SoftHSM"):
            settled_health_check(provider)
    finally:
        provider.close()
    # The allowance (and every command but `cofre serve`) keeps the software token.
    allowed = provider_from_settings(settings.hsm)
    try:
        settled_health_check(allowed)
    finally:
        allowed.close()
