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

And it never falls back to the token's newest on the database's word alone (review 45,
helper): with the SQLite file moved away for the length of the command, or the registry
emptied by a writer, the first version printed the planted key, exit 0. Now it refuses
(``hsm_key_unregistered``); only `vkey` and `public-key` with ``--before-first-start``
print the token's newest, warned of on stderr.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from audit.heads import log_origin, log_verifier_key
from tests.cofre_cli.test_cli import run

# Run in a child: SoftHSM2 reads its configuration (the dev token's) once per process.
_PLANT = """
from cofre_cli._shared import cli_settings
from hsm.provider import provider_from_settings

provider = provider_from_settings(cli_settings().hsm)
provider.generate_signing_key("cofre-audit-v2")
print(provider.public_key_pem("cofre-audit-v2").decode(), end="")
provider.close()
"""


@pytest.mark.hsm  # `cofre dev` creates a SoftHSM2 token
def test_a_planted_newer_audit_key_is_neither_handed_out_nor_signs(tmp_path: Path) -> None:
    env, _database, genuine, _planted = _dev_vault_with_planted_key(tmp_path)
    # What an officer hands the auditor, and what the log's witnesses pin: unchanged.
    after = run("audit", "public-key", env=env)
    assert after.returncode == 0, after.stderr
    assert after.stdout == genuine
    vkey = log_verifier_key(log_origin("cofre"), genuine.encode()).encode()
    assert run("audit", "vkey", env=env).stdout.strip() == vkey

    # The heads `cofre audit sequence` signs verify under the genuine key, and the
    # log verifies without --public-key too (the key the CLI reads is the genuine one).
    pinned = tmp_path / "genuine.pem"
    pinned.write_text(genuine)
    # A read of the log is an entry of its own: one to sequence into a new head.
    assert run("audit", "head", env=env).returncode == 0
    sequenced = run("audit", "sequence", env=env)
    assert sequenced.returncode == 0, sequenced.stderr
    for extra in (["--public-key", str(pinned)], []):
        verified = run("audit", "verify", *extra, "--unsafe-no-witness", env=env)
        assert verified.returncode == 0, verified.stderr
        assert verified.stdout.startswith("OK: ")


def _dev_vault_with_planted_key(tmp_path: Path) -> tuple[dict[str, str], Path, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    data_dir = tmp_path / "dev"
    assert run("dev", "--check", "--data-dir", str(data_dir), env=env).returncode == 0
    env["COFRE_CONFIG"] = str(data_dir / "cofre.toml")
    genuine = run("audit", "public-key", env=env)
    assert genuine.returncode == 0, genuine.stderr
    planted = subprocess.run(
        [sys.executable, "-c", _PLANT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert planted.returncode == 0, planted.stderr
    assert planted.stdout != genuine.stdout
    [database] = list(data_dir.glob("*.sqlite3"))
    return env, database, genuine.stdout, planted.stdout


def _refused(shown: subprocess.CompletedProcess[str], planted: str, said: str) -> None:
    assert planted not in shown.stdout
    assert shown.returncode == 1, shown.stdout
    assert shown.stderr.startswith(said), shown.stderr


@pytest.mark.hsm
def test_a_database_moved_away_is_no_licence_to_take_the_tokens_newest(tmp_path: Path) -> None:
    env, database, _genuine, planted = _dev_vault_with_planted_key(tmp_path)
    aside = database.with_name("aside.sqlite3")
    database.rename(aside)  # for the length of the officer's commands
    try:
        for command in (["public-key"], ["vkey"], ["export", "--out", str(tmp_path / "x")]):
            said = "error [schema_mismatch]: the database has no Cofre schema"
            _refused(run("audit", *command, env=env), planted, said)
        # Asked for, the token's newest is printed, and said to be unchecked.
        asked = run("audit", "public-key", "--before-first-start", env=env)
    finally:
        aside.rename(database)
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout == planted
    assert "WARNING: the database holds no Cofre schema" in asked.stderr
    assert "cofre-audit-v2" in asked.stderr


@pytest.mark.hsm
def test_an_emptied_registry_is_no_licence_either(tmp_path: Path) -> None:
    """A schema'd database whose `key.register` records a writer removed (SQLite: the
    file's writer drops the append-only triggers) reads as "nothing registered yet"."""
    env, database, _genuine, planted = _dev_vault_with_planted_key(tmp_path)
    with sqlite3.connect(database) as db:
        triggers = db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall()
        for (name,) in triggers:
            db.execute(f'DROP TRIGGER "{name}"')
        gone = db.execute(
            """DELETE FROM audit_entries WHERE payload LIKE '{"action":"key.register",%'"""
        ).rowcount
    assert gone > 0
    said = "error [hsm_key_unregistered]: the key registry holds no key, so the vault's"
    for command in (["public-key"], ["vkey"], ["sequence"]):
        _refused(run("audit", *command, env=env), planted, said)
