"""A data-key rotation over 100,000 stored tokens, with the vault SIGKILLed in the middle:
after the restart the job resumes, re-encrypts no row twice (the progress count equals
the row count), loses none, and every token still detokenizes to its PAN."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support.pans import card_number
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import make_vault
from vault.storage.database import create_database_engine

TOTAL = 100_000


def _pan(i: int) -> str:
    return card_number("37", i, length=15)


@pytest.mark.slow
def test_rotation_survives_sigkill(
    tmp_path: Path, softhsm_token: SoftHSMToken, reliability_report: list[str]
) -> None:
    vault = make_vault(tmp_path / "v", softhsm_token, None)
    url = f"sqlite:///{tmp_path / 'v' / 'cofre.sqlite3'}"
    vault.start()
    vault.acknowledge_custody()  # before the ceremony (PCI DSS 3.7.8)
    tokens: list[str] = []
    with vault.client(timeout=120) as client:
        for start in range(0, TOTAL, 1000):
            response = client.post(
                "/v1/tokenize/batch",
                json={
                    "items": [
                        {"pan": _pan(i), "format": "pan_last4"} for i in range(start, start + 1000)
                    ]
                },
            )
            assert response.status_code == 200, response.text
            tokens += [r["token"] for r in response.json()["results"]]
    with vault.client("officer-alice") as client:
        ceremony = client.post("/v1/admin/keys/rotations", json={"kind": "data"}).json()["id"]
    with vault.client("officer-bob") as client:
        assert client.post(f"/v1/admin/keys/rotations/{ceremony}/approve").status_code == 200
        deadline = time.monotonic() + 120
        while True:
            status = client.get(f"/v1/admin/keys/rotations/{ceremony}").json()
            if status["progress_done"] > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
    killed_at = status["progress_done"]
    assert 0 < killed_at < TOTAL, "the rotation must be killed in the middle"
    vault.kill()
    vault.start()
    with vault.client("officer-bob") as client:
        deadline = time.monotonic() + 300
        while status["state"] != "completed":
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
            status = client.get(f"/v1/admin/keys/rotations/{ceremony}").json()
    assert status["progress_total"] == TOTAL
    assert status["progress_done"] == TOTAL  # every row moved exactly once
    engine = create_database_engine(url)
    try:
        with engine.connect() as c:
            left = c.execute(
                sa.text("SELECT count(*) FROM tokens WHERE key_version = :v"),
                {"v": status["old_version"]},
            ).scalar_one()
            moved = c.execute(
                sa.text("SELECT count(*) FROM tokens WHERE key_version = :v"),
                {"v": status["new_version"]},
            ).scalar_one()
    finally:
        engine.dispose()
    assert left == 0
    assert moved == TOTAL
    with vault.client("settlement") as client:
        for i in range(0, TOTAL, 997):
            assert client.post("/v1/detokenize", json={"token": tokens[i]}).json()["pan"] == _pan(i)
    vault.stop()
    verified = vault.cofre("audit", "verify", "--unsafe-no-witness")
    assert verified.returncode == 0, verified.stderr
    reliability_report.append(
        f"data-key rotation over {TOTAL:,} tokens: SIGKILL at {killed_at:,} re-encrypted, "
        f"resumed, {status['progress_done']:,} moved exactly once, 0 lost"
    )
