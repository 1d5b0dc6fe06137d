"""An officer's or auditor's command against a vault that does not answer says which
address it tried, in one line, never a traceback.

Session 36: with the vault stopped (or COFRE_SERVER__PORT not the port it listens on),
`cofre evidence export` ended in an httpx traceback (`httpx.ConnectError: [Errno 111]
Connection refused`: `fail_cleanly` turns only Cofre's errors into a line, and a
traceback's locals could hold a secret), and `cofre keys list` said "the vault is
unreachable (ConnectError)" without the address or why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from api.pki import ensure_dev_pki
from tests.support.postgres import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "args",
    [
        ("keys", "list"),
        ("evidence", "export", "--from", "2026-12-01", "--to", "2026-12-02", "--out", "b.tgz"),
    ],
)
def test_a_vault_that_does_not_answer_is_named_in_one_line(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    pki = ensure_dev_pki(tmp_path / "pki", identities=("auditor", "officer-alice"))
    port = free_port()  # nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "verifier" / "src")]),
        COFRE_DATA_DIR=str(tmp_path / "data"),
        COFRE_SERVER__CA_BUNDLE=str(pki.ca),
        COFRE_SERVER__PORT=str(port),
    )
    result = subprocess.run(
        [sys.executable, "-m", "cofre_cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"https://127.0.0.1:{port}" in result.stderr, result.stderr
    assert "unreachable" in result.stderr
    # Its own code (session 46: it said configuration_error, though nothing in the
    # settings may be wrong; the vault may only be stopped).
    assert "error [vault_unreachable]" in result.stderr, result.stderr
    assert "refused" in result.stderr.lower(), result.stderr  # why, not only a class name
    assert not (tmp_path / "b.tgz").exists()
