"""A serving worker out of file descriptors (session 40), on a real `cofre serve` over
mTLS with the real SoftHSM token: its open-files limit is lowered under what it holds
(`prlimit`, as a leak of sockets would use it up), and the client's connection, opened
before, asks again. SoftHSM then finds no key: the answer said the key is missing. Now
503 problem+json `hsm_unavailable` (whose detail named the open-files limit until
session 41: now the generic one), `/readyz` not ready, an ERROR log naming the limit,
and answers again once the limit is back."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, log_events, make_vault

CARD = {"pan": "4111111111111111", "format": "uuid"}


@pytest.fixture
def vault(tmp_path: Path, softhsm_token: SoftHSMToken) -> Iterator[VaultProcess]:
    node = make_vault(tmp_path / "node", softhsm_token, None)
    node.start()
    try:
        yield node
    finally:
        node.stop()


def _limit(pid: int, which: str) -> str:
    """Process `pid`'s `which` (SOFT or HARD) limit of open files."""
    return subprocess.run(
        ["prlimit", "--pid", str(pid), "--nofile", "--output", which, "--noheadings"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _open_files(pid: int, soft: str) -> None:
    """Set process `pid`'s soft limit of open files (its hard limit kept)."""
    hard = _limit(pid, "HARD")
    subprocess.run(["prlimit", "--pid", str(pid), f"--nofile={soft}:{hard}"], check=True)


def test_a_worker_out_of_descriptors_says_so(vault: VaultProcess) -> None:
    assert vault.process is not None
    pid = vault.process.pid
    with vault.client() as client:
        assert client.post("/v1/tokenize", json=CARD).status_code in (200, 201)
        soft = _limit(pid, "SOFT")
        _open_files(pid, "3")  # under stdin, stdout and stderr: no new descriptor
        try:
            refused = client.post("/v1/tokenize", json=CARD)
            ready = client.get("/readyz")
        finally:
            _open_files(pid, soft)
        again = client.post("/v1/tokenize", json=CARD)
    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "hsm_unavailable", refused.text
    # The body says the generic detail only (session 41: it named the node's limits);
    # the cause is in the log (tests/api/test_ops41_hsm_unavailable_body.py).
    assert "open-files limit" not in refused.text, refused.text
    assert ready.status_code == 503, ready.text
    assert ready.json()["code"] == "hsm_unavailable", ready.text
    assert again.status_code in (200, 201), again.text
    errors = [e for e in log_events(vault.log) if e.get("level") == "error"]
    assert any("open-files limit" in str(e) for e in errors), errors[-5:]
