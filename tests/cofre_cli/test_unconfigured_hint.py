"""A command run where nothing configures Cofre says so in its error.

The README's commands assume the checkout, where the CLI finds `.cofre-dev/cofre.toml`
by itself. Run from another directory (session 36, a newcomer in `docs/` or `/tmp`),
with no `COFRE_CONFIG` and no `COFRE_*` setting, each command ran on the defaults and
failed on a symptom: `cofre keys list` with "not found:
.cofre-dev/pki/clients/officer-alice.pem", `cofre hsm status` with "no HSM PIN
configured", and `cofre db status` with "the database has no Cofre schema: run `cofre db
migrate`", which invites migrating a new empty database in the wrong directory. The
error now adds why: no configuration was found, and where it is looked for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HINT = "no configuration found"


def _run(cwd: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "verifier" / "src")])
    env.update(extra)
    return subprocess.run(
        [sys.executable, "-m", "cofre_cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("keys", "list"),
        ("evidence", "export", "--from", "2026-12-01", "--to", "2026-12-02", "--out", "b.tgz"),
        ("hsm", "status"),
    ],
)
def test_an_unconfigured_command_says_no_configuration_was_found(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = _run(tmp_path, *args)
    assert result.returncode == 1, result.stderr
    assert HINT in result.stderr, result.stderr
    assert "COFRE_CONFIG" in result.stderr
    assert ".cofre-dev/cofre.toml" in result.stderr


def test_a_configured_command_gets_no_hint(tmp_path: Path) -> None:
    """A setting in the environment is a configuration (production sets no file)."""
    result = _run(tmp_path, "keys", "list", COFRE_SERVER__PORT="9443")
    assert result.returncode == 1, result.stderr
    assert "not found" in result.stderr
    assert HINT not in result.stderr, result.stderr


def test_a_command_that_reads_no_settings_gets_no_hint(tmp_path: Path) -> None:
    """`cofre evidence verify` is the auditor's, offline: it needs no configuration."""
    (tmp_path / "audit.pem").write_text("not a key")
    args = ["missing.tar.gz", "--public-key", "audit.pem", "--origin", "cofre-audit/cofre"]
    result = _run(tmp_path, "evidence", "verify", *args)
    assert result.returncode != 0
    assert HINT not in result.stderr + result.stdout
