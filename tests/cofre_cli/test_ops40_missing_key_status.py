"""docs/cloudhsm.md's go-live block, typed as written, and the on-call's look at a token
that lost a registered key (session 40).

The block ran `cofre hsm init` right after the selftest, on a database nobody had
migrated: `error [schema_mismatch]`, exit 1, on the engineer's first go-live step (the
key registry is in the database, so the schema comes first). Then, with a registered key
destroyed on the token, `cofre hsm status` listed the token's keys and said nothing
(`"registry": "ok"`, no line naming the lost label): the runbook ("Incident: a Cofre key
missing from the token") left the engineer to notice a label was absent, and when only
the newest version of a kind is gone `/readyz` stays 200 (the version before it serves,
a bound in docs/threat-model.md), so nothing else shows it either. It now prints a
`MISSING keys` line (`"missing"` in `--json`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.dev import run_cofre, vault_cli_env
from tests.support.doc_blocks import DOCS, fenced_commands, split_assignments
from tests.support.softhsm import create_token, destroy_label

OWNER_URL = re.compile(r"postgresql://cofre_owner@db/cofre(\?[^'\s]*)?")


@pytest.mark.hsm
def test_the_go_live_block_runs_as_written_and_status_names_a_lost_key(
    tmp_path: Path, pg_database: str
) -> None:
    token = create_token(tmp_path / "hsm", "hsm1")
    env = vault_cli_env(tmp_path, token, pg_database)
    block = fenced_commands(DOCS / "cloudhsm.md", "Then, as the crypto user")
    for command, comment in block:
        if not command:
            continue
        # The documented owner URL, with its TLS pins (a network database needs them:
        # atk49h), is the test's local database here.
        assigned, words = split_assignments(OWNER_URL.sub(lambda _: pg_database, command))
        if words[1:3] == ["hsm", "selftest"]:
            words += ["--count", "20"]  # the go-live measure, shortened: the checks are all run
        done = run_cofre(words, env | assigned, tmp_path)
        assert done.returncode == 0, (command, done.stdout + done.stderr)
        if '"selftest PASSED"' in comment:
            assert "selftest PASSED" in done.stdout, done.stdout

    destroy_label(token, "cofre-fp-v1")
    shown = run_cofre(["cofre", "hsm", "status"], env, tmp_path)
    # Exit 1 while a registered key is missing (session 41, test_ops41_hsm_status_exit).
    assert shown.returncode == 1, shown.stdout + shown.stderr
    missing = [line for line in shown.stdout.splitlines() if "MISSING keys" in line]
    assert len(missing) == 1, shown.stdout
    assert missing[0].endswith(": cofre-fp-v1"), missing
    report = json.loads(run_cofre(["cofre", "hsm", "status", "--json"], env, tmp_path).stdout)
    assert report["missing"] == ["cofre-fp-v1"]
