"""The `cofre` console script, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cofre

COFRE = [sys.executable, "-m", "cofre.cli"]


def run(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COFRE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120, check=False
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"cofre {cofre.__version__}"


def test_help_lists_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("dev", "hsm", "config"):
        assert command in result.stdout


def test_dev_creates_environment_once(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    data_dir = tmp_path / "dev"
    first = run("dev", "--data-dir", str(data_dir), env=env)
    assert first.returncode == 0, first.stderr
    assert "created dev environment" in first.stdout
    assert "cofre-kek-v1" in first.stdout
    assert "ready" in first.stdout
    assert (data_dir / "hsm" / "user-pin").stat().st_mode & 0o777 == 0o600
    second = run("dev", "--data-dir", str(data_dir), env=env)
    assert second.returncode == 0, second.stderr
    assert "reusing dev environment" in second.stdout
    assert "created keys" not in second.stdout
    pin = (data_dir / "hsm" / "user-pin").read_text().strip()
    assert pin not in first.stdout + first.stderr + second.stdout + second.stderr

    status = run(
        "hsm", "status", "--json", env={**env, "COFRE_CONFIG": str(data_dir / "cofre.toml")}
    )
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    kek = next(k for k in report["keys"] if k["label"] == "cofre-kek-v1")
    assert kek["sensitive"] is True
    assert kek["extractable"] is False
    assert report["wrap_mechanism"] in {"AES_KEY_WRAP_PAD", "AES_KEY_WRAP", "AES_KEY_WRAP_KWP"}
    assert pin not in status.stdout

    shown = run("config", "show", env={**env, "COFRE_CONFIG": str(data_dir / "cofre.toml")})
    assert shown.returncode == 0
    assert pin not in shown.stdout


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COFRE_")}
    env["COFRE_HSM__PIN_FILE"] = str(tmp_path / "missing")
    result = run("hsm", "status", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error [configuration_error]: cannot read the HSM PIN file")
    assert "Traceback" not in result.stderr
