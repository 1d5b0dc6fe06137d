"""`cofre hsm status`'s exit code when it cannot vouch for the node (session 42).

Session 41 made the command exit 1 while a registered key in use is missing from the
token. Two cases still exited 0, so a runbook's `cofre hsm status && ...` or a cron
check saw success:

- a mechanism the vault calls printed `MISSING` (or the key wrap `NONE`): the vault
  cannot serve on that token;
- the key registry could not be read (the database unreachable, a read refused, a file
  that is not a database, an older schema, the officers' policy unreadable): the
  command cannot say whether keys are missing, and its text output said nothing at all.

Both now exit 1 (the registry's state on a `registry:` line, `"registry"` in --json, as
before). A registry that does not exist yet (a fresh database before `cofre db
migrate`, as the database itself answers: no SQLite file, no schema version table) is
not a failure: exit 0, with a line saying so and what to run; an empty registry
(migrated, no keys yet) stays exit 0.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from pathlib import Path

import psycopg
import pytest
from pkcs11 import Mechanism
from typer.testing import CliRunner

from cofre_cli.main import app
from tests.support.cloudhsm_shim import build_shim
from tests.support.dev import run_cofre, vault_cli_env
from tests.support.postgres import free_port
from tests.support.softhsm import create_token

VENDOR_WRAPS = (0x80002109, 0x8000216F)  # CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD, _ZERO_PAD


def hsm_status(env: dict[str, str], cwd: Path) -> tuple[int, list[str], dict[str, object]]:
    shown = run_cofre(["cofre", "hsm", "status"], env, cwd)
    as_json = run_cofre(["cofre", "hsm", "status", "--json"], env, cwd)
    assert as_json.returncode == shown.returncode, as_json.stderr
    assert shown.stderr == "", shown.stderr
    return shown.returncode, shown.stdout.splitlines(), json.loads(as_json.stdout)


def _registry_line(lines: list[str]) -> str:
    found = [line for line in lines if line.startswith("  registry: ")]
    assert len(found) == 1, lines
    return found[0]


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cofre.sqlite3'}"


@pytest.mark.hsm
def test_status_exits_1_on_a_token_without_a_mechanism_the_vault_calls(tmp_path: Path) -> None:
    token = create_token(tmp_path / "hsm", "hsm1")
    env = vault_cli_env(tmp_path, token, _sqlite_url(tmp_path))
    for words in (["cofre", "db", "migrate"], ["cofre", "hsm", "init"]):
        done = run_cofre(words, env, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
    shim = build_shim(tmp_path / "shim")
    through_shim = env | {"COFRE_HSM__LIBRARY": str(shim.library)}
    # The same token through an HSM that offers everything: exit 0.
    code, lines, _ = hsm_status(through_shim | shim.env(), tmp_path)
    assert code == 0, lines
    assert not [line for line in lines if "MISSING" in line or "NONE" in line], lines

    # An HSM without AES-GCM (security codes are sealed in the token).
    lacking = through_shim | shim.env(hide_mechanisms=[int(Mechanism.AES_GCM)])
    code, lines, report = hsm_status(lacking, tmp_path)
    assert code == 1, lines
    assert f"  mechanism {'AES_GCM':<24} MISSING" in lines  # the line scripts parse
    assert report["mechanisms"] == {
        name: name != "AES_GCM"
        for name in (
            "AES_KEY_GEN",
            "GENERIC_SECRET_KEY_GEN",
            "SHA256_HMAC",
            "EC_KEY_PAIR_GEN",
            "ECDSA",
            "AES_GCM",
        )
    }
    assert report["missing"] == []  # every key is there: the mechanism alone fails it

    # An HSM with no key wrap at all: no data key can be made or opened.
    no_wrap = through_shim | shim.env(hide_mechanisms=VENDOR_WRAPS)
    code, lines, report = hsm_status(no_wrap, tmp_path)
    assert code == 1, lines
    assert "  key wrap: NONE" in lines
    assert report["wrap_mechanism"] is None


@pytest.mark.hsm
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_registry_not_created_yet_exits_0_and_says_what_to_run(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """docs/cloudhsm.md's go-live: `cofre hsm status` on a fresh token before `cofre db
    migrate`. The database answers that it holds no schema: not a failure."""
    url = _sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("pg_database")
    token = create_token(tmp_path / "hsm", "hsm1")
    env = vault_cli_env(tmp_path, token, url)
    code, lines, report = hsm_status(env, tmp_path)
    assert code == 0, lines
    line = _registry_line(lines)
    assert line.startswith("  registry: not created yet"), line
    assert "`cofre db migrate`" in line, line
    assert str(report["registry"]).startswith("not created yet"), report
    if backend == "sqlite":  # a command that only reads creates no database
        assert not (tmp_path / "cofre.sqlite3").exists()

    # Migrated, no keys yet: empty, exit 0 as before.
    assert run_cofre(["cofre", "db", "migrate"], env, tmp_path).returncode == 0
    code, lines, report = hsm_status(env, tmp_path)
    assert code == 0, lines
    assert report["registry"] == "empty (adopted at the vault's first start)"
    assert not [line for line in lines if line.startswith("  registry: ")], lines


def _initialised(tmp_path: Path, url: str) -> dict[str, str]:
    token = create_token(tmp_path / "hsm", "hsm1")
    env = vault_cli_env(tmp_path, token, url)
    for words in (["cofre", "db", "migrate"], ["cofre", "hsm", "init"]):
        done = run_cofre(words, env, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
    code, lines, report = hsm_status(env, tmp_path)
    assert (code, report["registry"]) == (0, "ok"), lines
    return env


def _unavailable(env: dict[str, str], cwd: Path, code_name: str) -> None:
    code, lines, report = hsm_status(env, cwd)
    assert code == 1, lines
    assert report["registry"] == f"unavailable ({code_name})", report
    assert _registry_line(lines) == f"  registry: unavailable ({code_name})"


@pytest.mark.hsm
def test_an_unreadable_sqlite_registry_exits_1(tmp_path: Path) -> None:
    database = tmp_path / "cofre.sqlite3"
    env = _initialised(tmp_path, _sqlite_url(tmp_path))
    # An older schema: the registry is there, this version cannot read it.
    with sqlite3.connect(database) as db:
        (head,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
        db.execute("UPDATE alembic_version SET version_num = '0001'")
    _unavailable(env, tmp_path, "schema_mismatch")
    with sqlite3.connect(database) as db:
        db.execute("UPDATE alembic_version SET version_num = ?", (head,))
    # The officers' policy unreadable: registrations they signed cannot be counted.
    policy = tmp_path / "policy.toml"
    policy.write_text("this is [not a policy\n")
    _unavailable(env | {"COFRE_POLICY_FILE": str(policy)}, tmp_path, "policy_invalid")
    # A file that is not a database where the database should be (not "not created").
    database.write_bytes(secrets.token_bytes(4096))
    _unavailable(env, tmp_path, "storage_unavailable")


@pytest.mark.hsm
def test_an_unreadable_postgresql_registry_exits_1(tmp_path: Path, pg_database: str) -> None:
    env = _initialised(tmp_path, pg_database)
    dsn = pg_database.replace("postgresql+psycopg://", "postgresql://", 1)
    # A role that may read the schema version but not the log the registry is kept in.
    role = f"t_reader_{secrets.token_hex(4)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON alembic_version, cofre_schema TO {role}")
    as_role = env | {"COFRE_DATABASE__URL": pg_database.replace("://postgres@", f"://{role}@")}
    try:
        _unavailable(as_role, tmp_path, "storage_unavailable")
        # A role that may not even use the schema sees no table where Cofre's are: the
        # catalogue still lists them, so this is not "not created yet".
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("REVOKE USAGE ON SCHEMA public FROM PUBLIC")
        _unavailable(as_role, tmp_path, "schema_mismatch")
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("GRANT USAGE ON SCHEMA public TO PUBLIC")
            conn.execute(f"REVOKE ALL ON alembic_version, cofre_schema FROM {role}")
            conn.execute(f"DROP ROLE {role}")
    # Nothing listening where the database should be.
    unreachable = pg_database.split("@", 1)[0] + f"@127.0.0.1:{free_port()}/cofre"
    _unavailable(env | {"COFRE_DATABASE__URL": unreachable}, tmp_path, "storage_unavailable")


def test_the_help_says_both_exit_codes() -> None:
    shown = CliRunner().invoke(app, ["hsm", "status", "--help"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "a mechanism Cofre calls is MISSING" in text, text
    assert "the key registry cannot be read" in text, text
    assert "not created yet" in text, text


def test_the_readme_tables_the_exit_codes() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("`cofre hsm status` exit status", 1)
    assert len(section) == 2, "README's CLI section has no exit-status table for hsm status"
    table = section[1].split("\n\n", 2)[1]
    assert table.startswith("| Exit | When |"), table
    rows = [row for row in table.splitlines() if row.startswith("| `")]
    assert [row.split("|")[1].strip() for row in rows] == ["`0`", "`1`"], table
