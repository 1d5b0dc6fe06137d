"""`cofre audit public-key`: the PEM an auditor pins with `--public-key`, the same key
`cofre audit vkey` and `cofre audit export` read from the HSM."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from audit.heads import log_origin, log_verifier_key
from tests.cofre_cli.test_cli import run


@pytest.mark.hsm  # `cofre dev` creates a SoftHSM2 token
def test_public_key_is_the_key_vkey_and_export_use(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    data_dir = tmp_path / "dev"
    assert run("dev", "--check", "--data-dir", str(data_dir), env=env).returncode == 0
    env["COFRE_CONFIG"] = str(data_dir / "cofre.toml")

    printed = run("audit", "public-key", env=env)
    assert printed.returncode == 0, printed.stderr
    pem = printed.stdout
    assert pem.startswith("-----BEGIN PUBLIC KEY-----\n")
    assert pem.endswith("-----END PUBLIC KEY-----\n")

    out = tmp_path / "audit.pem"
    written = run("audit", "public-key", "--out", str(out), env=env)
    assert written.returncode == 0, written.stderr
    assert written.stdout == ""
    assert out.read_text() == pem

    exported = tmp_path / "export.jsonl"
    assert run("audit", "export", "--out", str(exported), env=env).returncode == 0
    first = json.loads(exported.read_text().splitlines()[0])
    assert first == {"type": "public_key", "pem": pem}
    vkey = run("audit", "vkey", env=env)
    assert vkey.returncode == 0, vkey.stderr
    assert vkey.stdout.strip() == log_verifier_key(log_origin("cofre"), pem.encode()).encode()

    # What the auditor does with it: the log verifies against the pinned file.
    assert run("audit", "sequence", env=env).returncode == 0
    verified = run(
        "audit", "verify", "--public-key", str(out), "--unsafe-no-witness", env=env
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("OK: ")


def test_public_key_fails_in_one_line_without_the_hsm(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COFRE_")}
    env["COFRE_HSM__PIN_FILE"] = str(tmp_path / "missing")
    out = tmp_path / "audit.pem"
    result = run("audit", "public-key", "--out", str(out), env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error [configuration_error]: cannot read the HSM PIN file")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not out.exists()
