"""`cofre serve` is production: it refuses what looks healthy but is not (SQLite, a
missing or empty policy, the dev PKI, SoftHSM2) unless told otherwise, and logs the redacted
effective configuration and the policy's hash at start. `cofre dev` writes a config
file the operator commands can use, port included."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from cofre.settings import DEFAULT_SOFTHSM_LIBRARY
from hsm.library import pool_size_for
from tests.support.cloudhsm_shim import CloudHSMShim
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault

INSECURE = (
    "COFRE_INSECURE__ALLOW_SQLITE",
    "COFRE_INSECURE__ALLOW_DEV_PKI",
    "COFRE_INSECURE__ALLOW_SOFTWARE_HSM",
)


def _strict(vault: VaultProcess) -> None:
    for name in INSECURE:
        vault.env.pop(name, None)


def _refusal(vault: VaultProcess) -> str:
    result = vault.cofre("serve")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error [configuration_error]: refusing to serve in production")
    assert "Traceback" not in result.stderr
    return result.stderr


def test_serve_refuses_sqlite_missing_policy_and_dev_pki(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    _strict(vault)
    vault.env["COFRE_POLICY_FILE"] = str(tmp_path / "node" / "polcy.toml")  # a typo
    said = _refusal(vault)
    assert "the database is SQLite" in said
    assert "polcy.toml does not exist" in said
    assert "the client CA bundle is the dev PKI's" in said
    assert "COFRE_INSECURE__ALLOW_SQLITE=true" in said


def test_serve_refuses_softhsm2_a_software_token(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    """SoftHSM2 keeps its "non-extractable" keys in files encrypted under the PIN: no
    secure cryptographic device, so the KEK, fingerprint and audit keys would be as
    safe as a file and its PIN, while every document (and the evidence) says "in the
    HSM" (PCI DSS 3.6.1.2; the QSA review of session 30, docs/pci-tokenization.md F2)."""
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    _strict(vault)
    said = _refusal(vault)
    assert "is SoftHSM2, a software token, not an HSM" in said
    assert "COFRE_INSECURE__ALLOW_SOFTWARE_HSM=true" in said


def test_serve_refuses_softhsm2_under_another_file_name(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    """A copy of libsofthsm2.so under a neutral name (a container's ``libvendor.so``)
    passed the file-name check and served from a software token (review 31). The check
    now also reads what the loaded library says about itself: C_GetInfo's manufacturer
    and description, and the configured token's manufacturer and model."""
    renamed = tmp_path / "libvendor.so"
    shutil.copyfile(DEFAULT_SOFTHSM_LIBRARY, renamed)
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    _strict(vault)
    vault.env["COFRE_HSM__LIBRARY"] = str(renamed)
    said = _refusal(vault)  # SQLite is refused too: the vault never starts here
    assert f"the PKCS#11 library {renamed} says it is SoftHSM" in said
    assert "token model 'SoftHSM v2'" in said
    assert "a software token, not an HSM" in said
    assert "COFRE_INSECURE__ALLOW_SOFTWARE_HSM=true" in said


def test_an_allowed_renamed_softhsm2_is_warned_of_and_serves(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    """With the allowance, the renamed copy is named as an insecure setting in effect,
    and the vault serves from it: reading the library's identity finalised it, and the
    provider initialises it again (the same process, the same library object)."""
    renamed = tmp_path / "libvendor.so"
    shutil.copyfile(DEFAULT_SOFTHSM_LIBRARY, renamed)
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    vault.env["COFRE_HSM__LIBRARY"] = str(renamed)
    vault.start()
    try:
        with vault.client() as client:
            answer = client.post(
                "/v1/tokenize", json={"pan": "4111111111111111", "format": "pan_bin6_last4"}
            )
        assert answer.status_code == 200, answer.text
    finally:
        vault.stop()
    lines = [json.loads(line) for line in vault.log.read_text().splitlines() if line.strip()]
    warned = [
        line["setting"] for line in lines if line.get("event") == "INSECURE setting in effect"
    ]
    assert "COFRE_INSECURE__ALLOW_SOFTWARE_HSM" in warned


def test_serve_refuses_the_cloudhsm_shim_which_is_softhsm2_underneath(
    tmp_path: Path, softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim
) -> None:
    """The tests' CloudHSM-behaviour shim forwards to SoftHSM2 and passes C_GetInfo and
    the slot and token information through unchanged: its keys are SoftHSM2's files, so
    `cofre serve` refuses it like SoftHSM2 itself (only the test rigs that set
    COFRE_INSECURE__ALLOW_SOFTWARE_HSM may serve from it)."""
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    _strict(vault)
    vault.env.update(cloudhsm_shim.env())
    vault.env["COFRE_HSM__LIBRARY"] = str(cloudhsm_shim.library)
    said = _refusal(vault)
    assert f"the PKCS#11 library {cloudhsm_shim.library} says it is SoftHSM" in said
    assert "COFRE_INSECURE__ALLOW_SOFTWARE_HSM=true" in said
    # The session pool still goes by file name: the shim locks for itself and is pooled.
    assert pool_size_for(cloudhsm_shim.library, 8) == 8


def test_serve_refuses_a_library_it_cannot_identify(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    """A library that cannot be loaded cannot be told from a software token: refused,
    where before it passed the file-name check and the vault started unready."""
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    _strict(vault)
    vault.env["COFRE_HSM__LIBRARY"] = str(tmp_path / "libvendor.so")  # no such file
    said = _refusal(vault)
    assert "cannot read what the PKCS#11 library says about itself" in said
    assert f"PKCS#11 library not found: {tmp_path / 'libvendor.so'}" in said


def test_serve_refuses_a_policy_that_names_nobody(
    tmp_path: Path, softhsm_token: SoftHSMToken, pg_database: str
) -> None:
    vault = make_vault(tmp_path / "node", softhsm_token, pg_database)
    empty = tmp_path / "empty.toml"
    empty.write_text("version = 1\n")
    vault.env["COFRE_POLICY_FILE"] = str(empty)
    said = _refusal(vault)
    assert f"the policy {empty} names no identity" in said
    assert "SQLite" not in said
    assert "dev PKI" not in said  # allowed by the suite's COFRE_INSECURE__ALLOW_DEV_PKI


def test_serve_logs_redacted_configuration_and_policy_hash(
    tmp_path: Path, softhsm_token: SoftHSMToken, pg_database: str
) -> None:
    vault = make_vault(tmp_path / "node", softhsm_token, pg_database)
    vault.env["COFRE_LOG_LEVEL"] = "INFO"
    vault.start()
    vault.stop()
    lines = [json.loads(line) for line in vault.log.read_text().splitlines() if line.strip()]
    start = next(line for line in lines if line.get("event") == "starting")
    policy = Path(vault.env["COFRE_POLICY_FILE"])
    assert start["policy_sha256"] == hashlib.sha256(policy.read_bytes()).hexdigest()
    assert start["mode"] == "production"
    assert start["configuration"]["database"]["url"] == "**********"
    assert start["configuration"]["server"]["port"] == vault.port
    warned = [
        line["setting"] for line in lines if line.get("event") == "INSECURE setting in effect"
    ]
    assert warned == ["COFRE_INSECURE__ALLOW_DEV_PKI", "COFRE_INSECURE__ALLOW_SOFTWARE_HSM"]
    text = vault.log.read_text()
    assert softhsm_token.user_pin not in text
    assert "postgres@" not in text  # the database URL never reaches a log


@pytest.mark.hsm  # `cofre dev` creates a SoftHSM2 token
def test_dev_config_file_names_the_port(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    data_dir = tmp_path / "dev"
    result = subprocess.run(
        [sys.executable, "-m", "cofre_cli", "dev", "--check", "--data-dir", str(data_dir)],
        env={**env, "COFRE_SERVER__PORT": "9555"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    config = tomllib.loads((data_dir / "cofre.toml").read_text())
    assert config["server"]["port"] == 9555
    shown = subprocess.run(
        [sys.executable, "-m", "cofre_cli", "config", "show"],
        env={**env, "COFRE_CONFIG": str(data_dir / "cofre.toml")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert json.loads(shown.stdout)["server"]["port"] == 9555


@pytest.mark.parametrize("value", ["true"])
def test_insecure_allowances_are_settings_not_secrets(value: str) -> None:
    """The allowances are visible in `cofre config show` (and so in evidence bundles)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    shown = subprocess.run(
        [sys.executable, "-m", "cofre_cli", "config", "show"],
        env={**env, "COFRE_INSECURE__ALLOW_SQLITE": value, "COFRE_CONFIG": "/dev/null"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["insecure"] == {
        "allow_sqlite": True,
        "allow_empty_policy": False,
        "allow_dev_pki": False,
        "allow_software_hsm": False,
        "seal_cards_without_domain": False,
    }


def test_a_library_that_is_there_but_does_not_initialise_is_judged_by_its_name(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    """A networked HSM's library may fail C_Initialize while its cluster is down: the
    vault then starts unready, as it did before the identity check, rather than exit
    (a cluster outage at a rollout would otherwise put every pod in a restart loop).
    Here a renamed SoftHSM2 whose configuration file is missing: only the other
    problems of this strict set-up are named, and a warning says why."""
    renamed = tmp_path / "libvendor.so"
    shutil.copyfile(DEFAULT_SOFTHSM_LIBRARY, renamed)
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    _strict(vault)
    vault.env["COFRE_HSM__LIBRARY"] = str(renamed)
    vault.env["COFRE_HSM__SOFTHSM_CONF"] = str(tmp_path / "missing.conf")
    result = vault.cofre("serve")
    assert result.returncode == 1, result.stderr
    warning, refusal = result.stderr.splitlines()[-2:]
    assert json.loads(warning)["event"] == (
        "PKCS#11 library not identified: judged by its file name alone"
    )
    assert refusal.startswith("error [configuration_error]: refusing to serve in production")
    assert "PKCS#11 library" not in refusal  # SQLite, the policy and the dev PKI only
    assert "COFRE_INSECURE__ALLOW_SOFTWARE_HSM" not in refusal
