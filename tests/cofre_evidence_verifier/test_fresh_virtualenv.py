"""As an auditor would: build the verifier's wheel, install it into a fresh virtualenv
holding only it and `cryptography` (and what `cryptography` itself needs), and verify a
real bundle exported by a running vault; a tampered copy fails there, naming the file.

No network: the wheel is built with `--no-build-isolation` from .venv's setuptools, and
`cryptography` (with `cffi`, `pycparser`) is packed from .venv, where the hash-pinned
lock installed it, and installed with `pip --no-index --find-links`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hsm.provider import HSMProvider
from tests.api.conftest import running_vault
from tests.support.vault_evidence import VAULT_ORIGIN, export_to, members, write_members
from tests.support.wheels import wheel_from_installed

ROOT = Path(__file__).resolve().parents[2]
PANS = ["4111111111111111", "5555555555554444"]
# What a fresh virtualenv may hold: the verifier, cryptography and its own dependencies,
# and the installer that `python -m venv` seeds.
ALLOWED = {"cofre-evidence-verifier", "cryptography", "cffi", "pycparser", "pip", "setuptools"}

pytestmark = pytest.mark.slow


def _run(argv: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    # A clean environment: nothing of the checkout (PYTHONPATH, the .venv) leaks in.
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(cwd),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def auditor_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtualenv with the verifier's wheel installed; yields its bin/. Removed
    afterwards: cryptography's compiled library holds digit runs the suite's PAN leak
    scan would report."""
    tmp = tmp_path_factory.mktemp("auditor")
    source = tmp / "verifier-src"
    shutil.copytree(ROOT / "verifier", source, ignore=shutil.ignore_patterns("*.egg-info", "build"))
    wheels = tmp / "wheels"
    wheels.mkdir()
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", wheels, source],
        tmp,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    for name in ("cryptography", "cffi", "pycparser"):
        wheel_from_installed(name, wheels)
    venv = tmp / "venv"
    made = _run([sys.executable, "-m", "venv", venv], tmp)
    assert made.returncode == 0, made.stderr
    installed = _run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-index",
         "--find-links", wheels, "cofre-evidence-verifier"],
        tmp,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    yield venv / "bin"
    shutil.rmtree(tmp)


@pytest.fixture(scope="module")
def real_bundle(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> Iterator[tuple[Path, Path]]:
    """A bundle exported by a running vault, and its audit public key (PEM file)."""
    tmp = tmp_path_factory.mktemp("vault")
    with running_vault(tmp, hsm_provider) as vault:
        since = datetime.now(UTC) - timedelta(seconds=5)
        with vault.client("payments") as c:
            for pan in PANS:
                assert c.post("/v1/tokenize", json={"pan": pan, "format": "uuid"}).is_success
        bundle = export_to(vault, since, tmp / "bundle.tar.gz")
        key = tmp / "audit.pem"
        key.write_bytes(hsm_provider.public_key_pem("cofre-audit-v1"))
        yield bundle, key


def test_the_fresh_virtualenv_holds_only_the_verifier_and_cryptography(
    auditor_env: Path, tmp_path: Path
) -> None:
    listed = _run([auditor_env / "python", "-m", "pip", "list", "--format=json"], tmp_path)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"cofre-evidence-verifier", "cryptography"} <= names <= ALLOWED
    for package in ("vault", "audit", "cofre", "compliance", "sqlalchemy", "pkcs11"):
        probe = _run([auditor_env / "python", "-c", f"import {package}"], tmp_path)
        assert probe.returncode == 1, package
    metadata = _run(
        [auditor_env / "python", "-c",
         "import importlib.metadata as m; print(m.requires('cofre-evidence-verifier'))"],
        tmp_path,
    )  # fmt: skip
    assert metadata.stdout.strip() == "['cryptography>=42']"


def test_the_version_matches_the_vaults_pin(auditor_env: Path, tmp_path: Path) -> None:
    """The vault's pyproject pins the verifier it ships with."""
    version = _run([auditor_env / "cofre-verify", "--version"], tmp_path).stdout.split()[-1]
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"cofre-evidence-verifier=={version}" in dependencies


def test_a_real_bundle_verifies_in_the_fresh_virtualenv(
    auditor_env: Path, real_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, key = real_bundle
    result = _run(
        [auditor_env / "cofre-verify", bundle, "--public-key", key, "--unsafe-no-witness",
         "--origin", VAULT_ORIGIN],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # The waiver is named in the verdict line itself (session 36).
    assert result.stdout.startswith("VERIFIED, UNSAFE: no witness cosignature was checked\n")
    assert "FAIL" not in result.stdout
    as_json = _run(
        [auditor_env / "python", "-m", "cofre_evidence_verifier", bundle, "--public-key", key,
         "--unsafe-no-witness", "--origin", VAULT_ORIGIN, "--json", "--html",
         tmp_path / "report.html"],
        tmp_path,
    )  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["ok"] is True
    assert report["missing_checks"] == []
    assert "VERIFIED" in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_a_tampered_bundle_fails_in_the_fresh_virtualenv_naming_the_file(
    auditor_env: Path, real_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, key = real_bundle
    files = members(bundle)
    # One byte added to the key inventory, as an insider hiding a key would edit it.
    files["keys/inventory.json"] = files["keys/inventory.json"].replace(b"{", b"{ ", 1)
    tampered = write_members(tmp_path / "tampered.tar.gz", files)
    result = _run(
        [
            auditor_env / "cofre-verify",
            tampered,
            "--public-key",
            key,
            "--unsafe-no-witness",
            "--origin",
            VAULT_ORIGIN,
        ],
        tmp_path,
    )
    assert result.returncode == 1
    assert result.stdout.startswith("FAILED\n")
    assert (
        "FAIL  keys/inventory.json: content differs from the manifest (size or SHA-256)"
        in result.stdout
    )
