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
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.dev import clean_env
from tests.support.doc_blocks import DOCS, fenced_commands, split_assignments
from tests.support.softhsm import SoftHSMToken, create_token

_DESTROY = """
import sys, pkcs11
token = pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2])
with token.open(rw=True, user_pin=sys.argv[3]) as session:
    for key in session.get_objects({pkcs11.Attribute.LABEL: sys.argv[4]}):
        key.destroy()
"""


def _cofre(words: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    assert words[0] == "cofre", words
    return subprocess.run(
        [sys.executable, "-m", "cofre_cli", *words[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # a far bound: fails only on a hang
        check=False,
    )


def _destroy(token: SoftHSMToken, label: str) -> None:
    """Destroy `label` on the token, as someone with the PIN could (its own process:
    python-pkcs11 reads SOFTHSM2_CONF once per process)."""
    subprocess.run(
        [sys.executable, "-c", _DESTROY, str(token.library), token.label, token.user_pin, label],
        env=clean_env() | {"SOFTHSM2_CONF": str(token.conf)},
        check=True,
        timeout=120,
    )


@pytest.mark.hsm
def test_the_go_live_block_runs_as_written_and_status_names_a_lost_key(
    tmp_path: Path, pg_database: str
) -> None:
    token = create_token(tmp_path / "hsm", "hsm1")
    pin = tmp_path / "cofre-hsm-pin"
    pin.write_text(token.user_pin)
    pin.chmod(0o400)
    env = clean_env() | {
        "COFRE_HSM__LIBRARY": str(token.library),
        "COFRE_HSM__TOKEN_LABEL": token.label,
        "COFRE_HSM__PIN_FILE": str(pin),
        "COFRE_HSM__SOFTHSM_CONF": str(token.conf),
        "COFRE_DATABASE__URL": pg_database,
        "COFRE_DATA_DIR": str(tmp_path / "data"),
    }
    block = fenced_commands(DOCS / "cloudhsm.md", "Then, as the crypto user")
    for command, comment in block:
        if not command:
            continue
        assigned, words = split_assignments(
            command.replace("postgresql://cofre_owner@db/cofre", pg_database)
        )
        if words[1:3] == ["hsm", "selftest"]:
            words += ["--count", "20"]  # the go-live measure, shortened: the checks are all run
        done = _cofre(words, env | assigned, tmp_path)
        assert done.returncode == 0, (command, done.stdout + done.stderr)
        if '"selftest PASSED"' in comment:
            assert "selftest PASSED" in done.stdout, done.stdout

    _destroy(token, "cofre-fp-v1")
    shown = _cofre(["cofre", "hsm", "status"], env, tmp_path)
    # Exit 1 while a registered key is missing (session 41, test_ops41_hsm_status_exit).
    assert shown.returncode == 1, shown.stdout + shown.stderr
    missing = [line for line in shown.stdout.splitlines() if "MISSING keys" in line]
    assert len(missing) == 1, shown.stdout
    assert missing[0].endswith(": cofre-fp-v1"), missing
    report = json.loads(_cofre(["cofre", "hsm", "status", "--json"], env, tmp_path).stdout)
    assert report["missing"] == ["cofre-fp-v1"]
