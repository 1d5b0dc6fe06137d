"""Schema migrations as production runs them: `cofre db migrate` (owner role, under a
lock) before `cofre serve` (which never migrates), the least-privileged role from
docs/operations.md, and an old vault version beside a newer, compatible schema."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.support.pans import card_number
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault
from vault.storage.database import create_database_engine
from vault.storage.schema_version import MIGRATIONS, check_schema, code_head, migrate

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _tables(url: str) -> set[str]:
    with psycopg.connect(_dsn(url)) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {row[0] for row in rows}


def _cofre_popen(vault: VaultProcess, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cofre_cli", *args],
        env=vault.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_three_concurrent_migrations_on_an_empty_database(
    tmp_path: Path, softhsm_token: SoftHSMToken, pg_database: str
) -> None:
    vault = make_vault(tmp_path / "node", softhsm_token, pg_database)
    runs = [_cofre_popen(vault, "db", "migrate") for _ in range(3)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], [err for _, err in outputs]
    said = sorted(out.strip() for out, _ in outputs)
    assert sum("migrated the schema from empty" in line for line in said) == 1, said
    assert sum("nothing to do" in line for line in said) == 2, said
    status = vault.cofre("db", "status")
    assert status.returncode == 0, status.stderr
    assert f"schema at revision {code_head()}" in status.stdout


def test_serve_and_read_only_commands_never_migrate(
    tmp_path: Path, softhsm_token: SoftHSMToken, pg_database: str
) -> None:
    vault = make_vault(tmp_path / "node", softhsm_token, pg_database)
    for command in (
        ("serve",),
        ("audit", "head"),
        ("audit", "verify", "--unsafe-no-witness"),
        ("db", "status"),
    ):
        result = vault.cofre(*command)
        assert result.returncode == 1, (command, result.stderr)
        last = result.stderr.splitlines()[-1]
        assert last.startswith("error [schema_mismatch]: the database has no Cofre"), (
            command,
            result.stderr,
        )
        assert "Traceback" not in result.stderr
    assert _tables(pg_database) == set()


def _documented_role_sql() -> str:
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"<!-- app-role -->\s*```sql\n(.*?)```", text, re.DOTALL)
    assert match, "docs/operations.md lost its app-role SQL block"
    return match.group(1)


def test_documented_least_privilege_role_runs_the_vault(
    tmp_path: Path, softhsm_token: SoftHSMToken, pg_database: str
) -> None:
    """Migrate as the owner, create the login role exactly as docs/operations.md says,
    then run `cofre serve` as that role: it serves, signs audit heads, and still cannot
    rewrite the audit log."""
    owner = make_vault(tmp_path / "owner", softhsm_token, pg_database)
    migrated = owner.cofre("db", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    sql = _documented_role_sql()
    login = re.search(r"CREATE ROLE (\w+) LOGIN", sql)
    assert login
    role = login.group(1)
    with psycopg.connect(_dsn(pg_database), autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(sql)
    try:
        app_url = pg_database.replace("://postgres@", f"://{role}@", 1)
        vault = make_vault(tmp_path / "node", softhsm_token, app_url)
        vault.start()  # runs `cofre db migrate` as the role first: nothing to do, no DDL
        with vault.client() as client:
            made = client.post(
                "/v1/tokenize", json={"pan": card_number("4", 11), "format": "pan_bin6_last4"}
            )
            assert made.status_code == 200, made.text
        with vault.client("settlement") as client:
            back = client.post("/v1/detokenize", json={"token": made.json()["token"]})
            assert back.status_code == 200, back.text
        sequenced = vault.cofre("audit", "sequence")
        assert sequenced.returncode == 0, sequenced.stderr
        verified = vault.cofre("audit", "verify", "--unsafe-no-witness")
        assert verified.returncode == 0, verified.stderr
        vault.stop()
        with psycopg.connect(_dsn(app_url)) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("UPDATE audit_entries SET payload = payload")
            conn.rollback()
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("CREATE TABLE intruder (x int)")
        assert "InsufficientPrivilege" not in vault.log.read_text()
    finally:
        with psycopg.connect(_dsn(pg_database), autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


NEXT_REVISION = '''"""A later version's additive revision (test only).

Revision ID: 9001
Revises: {head}
"""

from alembic import op
import sqlalchemy as sa

revision = "9001"
down_revision = "{head}"
branch_labels = None
depends_on = None
{compat}


def upgrade() -> None:
    op.add_column("tokens", sa.Column("later_version_note", sa.Text(), nullable=True))
'''


def _next_version_scripts(tmp: Path, *, compatible: bool) -> Path:
    scripts = tmp / "migrations"
    shutil.copytree(MIGRATIONS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    head = code_head()
    compat = f'min_code_revision = "{head}"' if compatible else ""
    (scripts / "versions" / "9001_later.py").write_text(
        NEXT_REVISION.format(head=head, compat=compat)
    )
    return scripts


@pytest.mark.parametrize("compatible", [True, False])
def test_previous_version_beside_a_newer_schema(
    tmp_path: Path, softhsm_token: SoftHSMToken, pg_database: str, compatible: bool
) -> None:
    """Version N's migration ran (here: this code's revisions plus one more); version
    N-1 (this code) keeps serving when N declares it compatible, and refuses to start
    when N does not."""
    engine = create_database_engine(pg_database)
    try:
        scripts = _next_version_scripts(tmp_path, compatible=compatible)
        migrate(engine, script_location=scripts)
        assert check_schema(engine, script_location=scripts).current == "9001"
    finally:
        engine.dispose()
    vault = make_vault(tmp_path / "node", softhsm_token, pg_database)
    if not compatible:
        refused = vault.cofre("serve")
        assert refused.returncode == 1
        last = refused.stderr.splitlines()[-1]
        assert last.startswith("error [schema_mismatch]: the database schema is at")
        assert "does not declare it compatible" in refused.stderr
        return
    vault.start()
    with vault.client() as client:
        made = client.post(
            "/v1/tokenize", json={"pan": card_number("4", 12), "format": "pan_bin6_last4"}
        )
    assert made.status_code == 200, made.text
    assert "declared compatible" in vault.log.read_text()
