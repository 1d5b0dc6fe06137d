"""`cofre hsm status`'s exit code, as the on-call engineer's script reads it (session 41).

Session 40 made the command print a `MISSING keys` line for a registered key absent from
the token, but it still exited 0: a check run from a script (`cofre hsm status &&
...`, a cron job, a restore's "is the key back?") saw success while a key the vault
needs was gone. It now exits 1 when a key the registry says is in use (the newest
version of each kind, every audit key, a KEK still wrapping data keys) is missing, 0 when
everything is present; the printed lines are as they were.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cofre_cli.main import app
from hsm.keys import KeyKind, key_label
from hsm.models import KeyInfo
from tests.support.dev import run_cofre, vault_cli_env
from tests.support.softhsm import create_token, destroy_label
from vault.key_presence import missing_keys


@pytest.mark.hsm
def test_status_exits_1_while_a_registered_key_is_missing(tmp_path: Path, pg_database: str) -> None:
    token = create_token(tmp_path / "hsm", "hsm1")
    env = vault_cli_env(tmp_path, token, pg_database)
    for words in (["cofre", "db", "migrate"], ["cofre", "hsm", "init"]):
        done = run_cofre(words, env, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
    present = run_cofre(["cofre", "hsm", "status"], env, tmp_path)
    assert present.returncode == 0, present.stdout + present.stderr
    assert "MISSING keys" not in present.stdout

    destroy_label(token, "cofre-fp-v1")
    shown = run_cofre(["cofre", "hsm", "status"], env, tmp_path)
    assert shown.returncode == 1, shown.stdout + shown.stderr
    # The lines scripts parse are unchanged, and nothing is said on stderr.
    missing = [line for line in shown.stdout.splitlines() if "MISSING keys" in line]
    assert missing == [
        "  MISSING keys (registered, not on the token: restore the HSM's backup, "
        'docs/key-ceremony.md "A key missing from the token"): cofre-fp-v1'
    ], shown.stdout
    assert shown.stderr == ""
    as_json = run_cofre(["cofre", "hsm", "status", "--json"], env, tmp_path)
    assert as_json.returncode == 1, as_json.stderr
    assert json.loads(as_json.stdout)["missing"] == ["cofre-fp-v1"]


def test_the_help_says_the_exit_codes() -> None:
    shown = CliRunner().invoke(app, ["hsm", "status", "--help"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "Exit status 1 when a key the key registry has in use is missing" in text, text
    assert "0 when every such key is present" in text, text


def _key(label: str) -> KeyInfo:
    return KeyInfo(
        label=label,
        object_class="SECRET_KEY",
        key_type="AES",
        key_bits=256,
        token=True,
        sensitive=True,
        extractable=False,
        always_sensitive=True,
        never_extractable=True,
        local=True,
        key_id=label,
        key_check="000000",
    )


def test_a_kek_still_wrapping_data_keys_is_counted_missing() -> None:
    """Mid-rotation, data keys are still stored under the old KEK until they are
    rewrapped: its absence loses them, whatever the newer version says."""
    old, new = key_label(KeyKind.KEK, 1), key_label(KeyKind.KEK, 2)
    fp = key_label(KeyKind.FINGERPRINT, 1)
    registered = [old, new, fp]
    on_token = [_key(new), _key(fp)]
    assert missing_keys(registered, on_token) == []  # destroyed by its rotation: nothing
    assert missing_keys(registered, on_token, wrapping=[old]) == [old]
