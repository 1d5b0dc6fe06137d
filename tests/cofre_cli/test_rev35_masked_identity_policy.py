"""Review 35, with real processes: a policy naming an identity the audit log would
record masked (12 digits or more in a row: ``urn:corp:officer:000123456789``) is
refused by `cofre serve` at start and by a SIGHUP reload, which keeps the policy in
force and logs `reload failed` as for any policy that does not load; neither says the
run in clear (tests/policies/test_rev35_masked_identities.py: the loader's message).
Session 36: the same for such a run anywhere else in the text (a comment with a merchant
number), which the `policy.load` entry recorded masked: it no longer matched its hash
(tests/policies/test_res36_masked_policy_text.py)."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from audit.schema import audit_entries
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault

RUN = "000123456789"
NUMBERED = f"urn:corp:officer:{RUN}"
TOKENIZE = '"tokenize", "detokenize_masked", "lookup"'
VISA = "4111111111111111"
OFFICER = f'\n[identities."{NUMBERED}"]\nrole = "auditor"\noperations = ["audit_read"]\n'
COMMENT = f"\n# acquirer merchant id {RUN}, reviewed 2026-12-05\n"
# The identity by its position (session 35), the rest of the text by line and column.
MASKED = pytest.mark.parametrize("appended", [OFFICER, COMMENT], ids=["identity", "comment"])
# Bounds on waiting for a process: they fail only on a hang.
EXIT_BOUND = 120.0
RELOAD_BOUND = 60.0
_POSITION = re.compile(r"identity \d+ of \d+|line \d+, column \d+")


@MASKED
def test_serve_refuses_the_policy_at_start(
    tmp_path: Path, softhsm_token: SoftHSMToken, appended: str
) -> None:
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    policy = Path(vault.env["COFRE_POLICY_FILE"])
    policy.write_text(policy.read_text() + appended)
    migrated = vault.cofre("db", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    vault.spawn()
    try:
        code = _exit_code(vault)
    finally:
        vault.stop()
    output = vault.log.read_text()
    assert code not in (None, 0), output[-3000:]
    assert "policy_invalid" in output, output[-3000:]
    assert _POSITION.search(output), output[-3000:]
    assert RUN not in output


@MASKED
def test_a_reload_to_the_policy_is_refused_and_the_old_one_stays(
    tmp_path: Path, softhsm_token: SoftHSMToken, appended: str
) -> None:
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    policy = Path(vault.env["COFRE_POLICY_FILE"])
    original = policy.read_text()
    assert TOKENIZE in original
    vault.start()
    try:
        # Payments may tokenize now; the new text also takes that away (so a reload that
        # went through would show), and names the numbered identity.
        untokenizing = TOKENIZE.replace('"tokenize", ', "")
        policy.write_text(original.replace(TOKENIZE, untokenizing, 1) + appended)
        assert vault.process is not None
        vault.process.send_signal(signal.SIGHUP)
        failed = _reload_failed(vault)
        with vault.client("payments") as client:
            kept = client.post("/v1/tokenize", json={"pan": VISA, "format": "pan_bin6_last4"})
    finally:
        vault.stop()
    assert _POSITION.search(failed), failed
    assert RUN not in vault.log.read_text()
    assert kept.status_code == 200, kept.text
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'node' / 'cofre.sqlite3'}")
    with engine.connect() as connection:
        actions = [
            json.loads(payload)["action"]
            for payload in connection.scalars(sa.select(audit_entries.c.payload))
        ]
    engine.dispose()
    assert "policy.reload" not in actions
    assert actions.count("policy.load") == 1


def _exit_code(vault: VaultProcess) -> int | None:
    """The process's exit status; None (after `EXIT_BOUND`) if it is still running, or
    at once once it answers readiness (it took the policy and served)."""
    assert vault.process is not None
    deadline = time.monotonic() + EXIT_BOUND
    while time.monotonic() < deadline:
        if (code := vault.process.poll()) is not None:
            return code
        try:
            with vault.client() as client:
                if client.get("/readyz").status_code == 200:
                    return None
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return None


def _reload_failed(vault: VaultProcess) -> str:
    """The `reload failed` log line, once written (fails after `RELOAD_BOUND`)."""
    deadline = time.monotonic() + RELOAD_BOUND
    while time.monotonic() < deadline:
        lines = [line for line in vault.log.read_text().splitlines() if "reload failed" in line]
        if lines:
            return lines[0]
        time.sleep(0.1)
    raise AssertionError(f"no `reload failed` line:\n{vault.log.read_text()[-3000:]}")
