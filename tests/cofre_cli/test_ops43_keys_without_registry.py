"""`cofre hsm status` on a token that holds Cofre's keys while the database it points at
holds no Cofre schema (session 43, the question session 42 left open).

`cofre hsm init` records every key it makes in the database's key registry, so it runs
after `cofre db migrate` (docs/cloudhsm.md): a token holding Cofre's keys and a
database with no schema is never a fresh install. It is a node pointed at the wrong
database (a typo in `COFRE_DATABASE__URL`, another environment's), or one whose database
was lost. Session 42 exited 0 there, with a line telling on-call to run `cofre db
migrate` and then `cofre hsm init` "on a new token": a runbook's `cofre hsm status &&
...` carried on, and the hint led to the start of a vault that adopts the production
keys into an empty registry, beside the database that holds their tokens. It now exits
1, names the keys, and says not to initialise anything. A token with no Cofre key
(selftest keys aside) before `cofre db migrate` is still the go-live case: exit 0.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cofre_cli.main import app
from tests.cofre_cli.test_ops42_hsm_status_gaps import hsm_status
from tests.support.dev import run_cofre, vault_cli_env
from tests.support.softhsm import create_token


@pytest.mark.hsm
def test_a_token_in_service_beside_a_database_with_no_schema_exits_1(tmp_path: Path) -> None:
    token = create_token(tmp_path / "hsm", "hsm1")
    serving = vault_cli_env(tmp_path, token, f"sqlite:///{tmp_path / 'cofre.sqlite3'}")
    for words in (["cofre", "db", "migrate"], ["cofre", "hsm", "init"]):
        done = run_cofre(words, serving, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr

    elsewhere = serving | {"COFRE_DATABASE__URL": f"sqlite:///{tmp_path / 'other.sqlite3'}"}
    code, lines, report = hsm_status(elsewhere, tmp_path)
    assert code == 1, lines
    [line] = [line for line in lines if line.startswith("  registry: ")]
    assert line.startswith("  registry: not created yet, but the token holds Cofre's keys ("), line
    assert "cofre-kek-v1" in line, line
    assert "COFRE_DATABASE__URL" in line, line
    assert "do not run `cofre hsm init`" in line, line
    assert "`cofre db migrate`" not in line, line
    assert str(report["registry"]) == line.removeprefix("  registry: "), report
    assert not (tmp_path / "other.sqlite3").exists()  # a command that only reads

    # The same token beside its own database: vouched for, as before.
    code, lines, report = hsm_status(serving, tmp_path)
    assert (code, report["registry"]) == (0, "ok"), lines


@pytest.mark.hsm
def test_selftest_keys_alone_are_still_the_go_live_case(tmp_path: Path) -> None:
    """docs/cloudhsm.md's go-live runs `cofre hsm selftest` before anything else; the
    keys it leaves behind, if any, are no Cofre key in service."""
    token = create_token(tmp_path / "hsm", "hsm1")
    env = vault_cli_env(tmp_path, token, f"sqlite:///{tmp_path / 'cofre.sqlite3'}")
    selftest = run_cofre(["cofre", "hsm", "selftest", "--count", "2"], env, tmp_path)
    assert selftest.returncode == 0, selftest.stdout + selftest.stderr
    code, lines, report = hsm_status(env, tmp_path)
    assert code == 0, lines
    assert str(report["registry"]).startswith("not created yet (the database holds no"), report


def test_the_help_says_so() -> None:
    shown = CliRunner().invoke(app, ["hsm", "status", "--help"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "the token holds Cofre's keys (the wrong database, or a lost one" in text, text
