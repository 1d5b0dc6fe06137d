"""Session 45: the audit CLI takes the audit key the vault itself signs with, never a
key pair planted on the token under a newer label.

`cofre audit public-key`, `vkey`, `export`, `verify` (without ``--public-key``) and
`sequence` built their signer with no key registry and no handovers: "the newest
``cofre-audit-vN`` on the token". Whoever holds the crypto-user PIN can make a key pair
``cofre-audit-v2`` that no ceremony made and no handover introduced; an officer who then
ran `cofre audit public-key` handed the auditor the planted key (the PIN holder's
rewritten log, signed with it, then verifies under what the auditor pinned), and `cofre
audit sequence` signed the log's heads with it. The vault's own signer (`cofre serve`)
takes the key the newest verified handover introduced, else the newest *registered*
audit key; the CLI now builds that same signer (`cofre_cli._audit_key`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cofre_cli.test_cli import run

# Run in a child: SoftHSM2 reads its configuration (the dev token's) once per process.
_PLANT = """
from cofre_cli._shared import cli_settings
from hsm.provider import provider_from_settings

provider = provider_from_settings(cli_settings().hsm)
provider.generate_signing_key("cofre-audit-v2")
provider.close()
"""


@pytest.mark.hsm  # `cofre dev` creates a SoftHSM2 token
def test_a_planted_newer_audit_key_is_neither_handed_out_nor_signs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    data_dir = tmp_path / "dev"
    assert run("dev", "--check", "--data-dir", str(data_dir), env=env).returncode == 0
    env["COFRE_CONFIG"] = str(data_dir / "cofre.toml")
    genuine = run("audit", "public-key", env=env)
    assert genuine.returncode == 0, genuine.stderr
    vkey = run("audit", "vkey", env=env).stdout

    planted = subprocess.run(
        [sys.executable, "-c", _PLANT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert planted.returncode == 0, planted.stderr

    # What an officer hands the auditor, and what the log's witnesses pin: unchanged.
    after = run("audit", "public-key", env=env)
    assert after.returncode == 0, after.stderr
    assert after.stdout == genuine.stdout
    assert run("audit", "vkey", env=env).stdout == vkey

    # The heads `cofre audit sequence` signs verify under the genuine key, and the
    # log verifies without --public-key too (the key the CLI reads is the genuine one).
    pinned = tmp_path / "genuine.pem"
    pinned.write_text(genuine.stdout)
    # A read of the log is an entry of its own: one to sequence into a new head.
    assert run("audit", "head", env=env).returncode == 0
    sequenced = run("audit", "sequence", env=env)
    assert sequenced.returncode == 0, sequenced.stderr
    for extra in (["--public-key", str(pinned)], []):
        verified = run("audit", "verify", *extra, "--unsafe-no-witness", env=env)
        assert verified.returncode == 0, verified.stderr
        assert verified.stdout.startswith("OK: ")
