"""The harness itself: the token is the fixture's own, PostgreSQL is a real server, and
PostgreSQL trouble fails the suite instead of skipping it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from hsm.provider import HSMProvider
from tests.support import leakguard
from tests.support.leakguard import LeakGuard, write_token_list
from tests.support.postgres import PostgresCluster
from tests.support.softhsm import SoftHSMToken

REPO = Path(__file__).resolve().parent.parent
PROBE = "tests/harness_probe/probe_postgres.py"


def test_token_is_the_fixtures_own(
    softhsm_token: SoftHSMToken, hsm_provider: HSMProvider, tmp_path_factory: pytest.TempPathFactory
) -> None:
    conf = Path(os.environ["SOFTHSM2_CONF"])
    assert conf == softhsm_token.conf
    assert tmp_path_factory.getbasetemp() in conf.parents
    assert f"directories.tokendir = {softhsm_token.token_dir.resolve()}" in conf.read_text()
    assert hsm_provider.token_info().token_label == softhsm_token.label
    # The token's files are in the fixture's directory, not the system store.
    assert any(softhsm_token.token_dir.iterdir())


def test_postgres_is_a_real_server(postgres: PostgresCluster) -> None:
    with psycopg.connect(postgres.dsn()) as conn:
        row = conn.execute("SELECT version(), current_setting('port')").fetchone()
    assert row is not None
    assert row[0].startswith("PostgreSQL ")
    assert int(row[1]) == postgres.port
    assert "database system is ready to accept connections" in postgres.log_file.read_text()


def _run_probe(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--no-cov",
            "-q",
            "-o",
            "addopts=",
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.postgres  # runs the suite's PostgreSQL fixture
def test_unreachable_postgres_fails_not_skips() -> None:
    env = {**os.environ, "COFRE_TEST_PG_DSN": "postgresql://postgres@127.0.0.1:1/postgres"}
    result = _run_probe(f"{PROBE}::test_uses_postgres", env=env)
    assert result.returncode != 0, result.stdout
    assert "1 error" in result.stdout
    assert "skipped" not in result.stdout
    assert "PostgreSQL is required and could not be used" in result.stdout


@pytest.mark.postgres  # runs the suite's PostgreSQL fixture
def test_postgres_stopped_mid_run_fails_not_skips() -> None:
    env = {k: v for k, v in os.environ.items() if k != "COFRE_TEST_PG_DSN"}
    result = _run_probe(PROBE, env=env)
    assert result.returncode != 0, result.stdout
    assert "2 passed, 1 error" in result.stdout
    assert "skipped" not in result.stdout
    assert "PostgreSQL stopped answering" in result.stdout


def test_session_leak_scan_fails_a_run_whose_tests_all_pass() -> None:
    # The child's base temp is outside ours, so our own scan does not see its plants.
    with tempfile.TemporaryDirectory() as scratch:
        result = _run_probe(
            "tests/harness_probe/probe_leak.py", f"--basetemp={scratch}/t", env=dict(os.environ)
        )
    assert "4 passed" in result.stdout
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert "PAN leak scan" in result.stdout
    # the file: test PAN and Luhn rule; the log; the key file's test PAN (not the serial)
    assert "4 findings" in result.stdout
    assert "/service.log: test PAN 411111******1111" in result.stdout
    assert "/key.object: test PAN 555555******4444" in result.stdout
    assert "token.object" not in result.stdout
    assert "test_logs_a_generated_card_number (Captured log call): Luhn-valid run" in (
        result.stdout
    )
    assert "4111111111111111" not in result.stdout  # findings are reported masked


@pytest.mark.hsm  # the child's guard watches its own session token
def test_a_module_that_changes_the_shared_token_s_keys_fails_by_name() -> None:
    result = _run_probe(
        "-p",
        "no:randomly",
        "tests/harness_probe/probe_keys.py",
        "tests/harness_probe/probe_keys_after.py",
        env=dict(os.environ),
    )
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert "2 passed, 1 error" in result.stdout
    assert "ERROR at teardown of test_rotates_the_shared_token_s_key_encryption_key" in (
        result.stdout
    )
    assert (
        "tests/harness_probe/probe_keys.py changed the Cofre keys of a token the session "
        "shares (shared token: added ['cofre-kek-v2'], removed nothing)"
    ) in result.stdout


def test_the_session_scan_on_worker_processes_finds_what_one_process_finds() -> None:
    """Session 43: the scan runs on a worker process per core (spawned). Over enough
    files to use them, a card in clear in a log, a card among an SQLite database's
    stored values and two listed tokens that only read as a card when joined
    (4123450000057142, a test PAN of this file) are found, or not, as the scan in one
    process finds them, in the files' order. Outside pytest's base temp, which the
    session's own scan reads."""
    planted = "4111111111111111"
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for index in range(80):
            (root / f"log-{index:02d}.txt").write_text(f"line {index}\n")
        (root / "log-41.txt").write_text(f"card {planted}\n")
        conn = sqlite3.connect(root / "held.sqlite3")
        with conn:
            conn.execute("CREATE TABLE tokens (token TEXT, note TEXT)")
            conn.execute("INSERT INTO tokens VALUES ('5000009876541234', ?)", [planted])
        conn.close()
        (root / "leakscan").mkdir()
        write_token_list(root / "leakscan", "t_glued", ["5000009876541234", "5000005714212346"])
        found = []
        for workers in (1, 2):
            guard = LeakGuard(root=root)
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(leakguard, "_worker_count", lambda n=workers: n)
                guard.scan()
            found.append(guard.findings)
    assert found[0] == found[1]
    assert found[1] == [
        "log-41.txt: test PAN 411111******1111",
        "log-41.txt: Luhn-valid run 411111******1111 at byte 5",
        "held.sqlite3: test PAN 411111******1111",
        "held.sqlite3 (stored values): test PAN 411111******1111",
        "held.sqlite3 (stored values): Luhn-valid run 411111******1111 at byte 21",
    ], found[1]
