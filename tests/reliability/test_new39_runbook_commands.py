"""The runbooks' `cofre audit verify` steps, typed as docs/operations.md writes them
(session 39).

"Failure behaviour" told the on-call engineer, after a worker killed by the OOM killer
or a PostgreSQL restart, to check the log with a bare `cofre audit verify` ("drill 36:
OK"). As written it never says OK: without a witness key it refuses ("FAILED: no
witness key pinned (--witness-key)", exit 1), the pages' own audit reads (PCI DSS
10.2.1) for nothing. Here each command is taken from the page's text and run against a
`cofre dev` vault, the witness's key kept as the restore runbook keeps it
(``w1.vkey``): the recovery check on the running vault, then the ``integrity_error``
incident's ("it names the first bad index") once an entry was changed behind the
vault's back by someone holding the database file.
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.dev import clean_env, start_dev, until_listening

_OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _runbook_command(start: str, program: str) -> str:
    """The first backticked `program` command of docs/operations.md after `start` (a
    section's heading, a table row's first cell), before the next heading or row."""
    text = _OPERATIONS.read_text(encoding="utf-8")
    body = re.split(r"\n###? |\n\| ", text.split(start, 1)[1], maxsplit=1)[0]
    found = re.search(rf"`({re.escape(program)}[^`]*)`", " ".join(body.split()))
    assert found is not None, f"no `{program}` after {start!r}"
    return found.group(1)


def _run(command: str, cwd: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """`command` (a `cofre ...` line) as the engineer types it, in `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", "cofre_cli", *shlex.split(command)[1:]],
        cwd=cwd,
        env=clean_env() | {"COFRE_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _change_an_entry(database: Path, offset: int) -> None:
    """Change the entry at leaf `offset` as someone with the database file could: drop
    the append-only triggers, rewrite the row, put the triggers back."""
    with sqlite3.connect(database) as connection:
        triggers = connection.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
            "AND tbl_name = 'audit_entries'"
        ).fetchall()
        for name, _ in triggers:
            connection.execute(f'DROP TRIGGER "{name}"')
        entry_id, payload = connection.execute(
            "SELECT a.id, a.payload FROM audit_entries a JOIN audit_leaves l "
            "ON l.entry_id = a.id WHERE l.leaf_index = ?",
            (offset,),
        ).fetchone()
        connection.execute(
            "UPDATE audit_entries SET payload = ? WHERE id = ?",
            (payload.replace('"actor":"', '"actor":"x', 1), entry_id),
        )
        for _, sql in triggers:
            connection.execute(sql)


@pytest.mark.hsm  # `cofre dev` creates a SoftHSM2 token
def test_the_runbooks_verify_steps_work_as_written(tmp_path: Path) -> None:
    data_dir = tmp_path / "dev"
    config = data_dir / "cofre.toml"
    dev = start_dev(data_dir, clean_env(), "--workers", "1")
    try:
        until_listening(dev)
        shutil.copy(data_dir / "witness" / "witness.vkey", tmp_path / "w1.vkey")
        recovery = _runbook_command("| a worker of a node killed", "cofre audit verify")
        # The newest head may be a second old and not cosigned yet (its message says
        # so: "the witnesses have not been reached yet"); the engineer runs it again.
        deadline = time.monotonic() + 120  # a far bound: fails only on a hang
        while True:
            done = _run(recovery, tmp_path, config)
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            if "not been reached yet" not in done.stdout + done.stderr:
                break
            time.sleep(1)
        assert done.returncode == 0, (recovery, done.stdout + done.stderr)
        assert "\nOK: " in "\n" + done.stdout, done.stdout
    finally:
        dev.send_signal(signal.SIGTERM)
        dev.communicate(timeout=120)
    _change_an_entry(data_dir / "cofre.sqlite3", 3)
    command = _runbook_command("### Incident: `integrity_error`", "cofre audit verify")
    done = _run(command, tmp_path, config)
    assert done.returncode == 1
    assert "the entry at leaf index 3 was changed" in done.stdout + done.stderr, (
        command,
        done.stdout + done.stderr,
    )
