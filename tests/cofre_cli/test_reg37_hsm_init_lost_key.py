"""`cofre hsm init` on a vault whose version-1 key is gone from the token (session 37).

`cofre hsm init` makes version 1 of each kind the token lacks and registers it. Run on a
vault that has served, with `cofre-fp-v1` destroyed (lost, or destroyed by an operator
holding the PIN), it made a new `cofre-fp-v1` and wrote its `key.register`: the label's
last record wins, so the vault took a key no ceremony made. Version 1 is made only at
the log's first start (check 6d fails any later one); a lost key is restored from the
HSM's backup. Now `cofre hsm init` (and `cofre dev`) refuse, make nothing and say so.

The `cofre` console script, run as a user runs it, on `cofre dev`'s own SoftHSM2 token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cofre_cli.test_cli import run

DESTROY = (
    "from cofre.settings import load_settings; from hsm.provider import provider_from_settings;"
    "provider_from_settings(load_settings().hsm).destroy_key('cofre-fp-v1')"
)


@pytest.mark.hsm  # `cofre dev --check` makes its own SoftHSM2 token
def test_hsm_init_refuses_to_make_a_lost_version_one_again(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    data_dir = tmp_path / "dev"
    assert run("dev", "--check", "--data-dir", str(data_dir), env=env).returncode == 0
    env["COFRE_CONFIG"] = str(data_dir / "cofre.toml")
    destroyed = subprocess.run(
        [sys.executable, "-c", DESTROY], env=env, capture_output=True, text=True, check=False
    )
    assert destroyed.returncode == 0, destroyed.stderr
    for command in (["hsm", "init"], ["dev", "--check", "--data-dir", str(data_dir)]):
        result = run(*command, env=env)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "error [hsm_key_not_found]" in result.stderr, result.stderr
        assert "no cofre-fp-v* key on the token" in result.stderr
        assert "registered before: cofre-fp-v1" in result.stderr
        assert "backup" in result.stderr
    status = json.loads(run("hsm", "status", "--json", env=env).stdout)
    assert "cofre-fp-v1" not in {key["label"] for key in status["keys"]}, "a key was made"
    assert run("audit", "sequence", env=env).returncode == 0
    exported = tmp_path / "log.jsonl"
    assert run("audit", "export", "--out", str(exported), env=env).returncode == 0
    registered = [
        json.loads(r["payload"])["key_id"]
        for r in map(json.loads, exported.read_text().splitlines())
        if r["type"] == "entry" and '"action":"key.register"' in r["payload"]
    ]
    assert sorted(registered) == ["cofre-audit-v1", "cofre-fp-v1", "cofre-kek-v1"]


@pytest.mark.hsm
def test_hsm_init_on_a_whole_token_still_does_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    data_dir = tmp_path / "dev"
    assert run("dev", "--check", "--data-dir", str(data_dir), env=env).returncode == 0
    env["COFRE_CONFIG"] = str(data_dir / "cofre.toml")
    assert "nothing to do" in run("hsm", "init", env=env).stdout
