"""The status of a rotation held back by a token row that fails authentication (rot38),
over real mutual TLS, as an officer and `cofre keys status` see it.

Before: the rotation worker's pass raised `InvalidTag` at the row on every pass, and
the status showed a running rotation whose progress never moved, with nothing saying
why. Now the status names the token and what to do, and the CLI prints both."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from cofre_cli.commands.keys import _show_ceremony
from hsm.provider import HSMProvider
from tests.api.conftest import running_vault
from tests.api.test_forged_ceremony_rows import ROTATIONS
from tests.api.test_sec31_ceremony_replay import VISA


def test_the_status_names_the_unreadable_token_and_what_to_do(
    tmp_path: Path,
    hsm_provider: HSMProvider,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with running_vault(tmp_path / "vault", hsm_provider, database_url) as vault:
        with vault.client() as payments:
            sealed = payments.post("/v1/tokenize", json={"pan": VISA, "format": "pan_bin6_last4"})
        assert sealed.status_code in {200, 201}, sealed.text
        with vault.runtime.engine.begin() as connection:  # the writer flips one byte
            row = connection.execute(sa.text("SELECT id, ciphertext FROM tokens")).one()
            flipped = bytes([row.ciphertext[0] ^ 1]) + bytes(row.ciphertext)[1:]
            connection.execute(
                sa.text("UPDATE tokens SET ciphertext = :c WHERE id = :i"),
                {"c": flipped, "i": row.id},
            )
        with vault.client("officer-alice") as alice:
            proposed = alice.post(ROTATIONS, json={"kind": "data"})
        assert proposed.status_code == 201, proposed.text
        ceremony = proposed.json()["id"]
        with vault.client("officer-bob") as bob:
            assert bob.post(f"{ROTATIONS}/{ceremony}/approve").status_code == 200
            for _ in range(5):
                vault.runtime.rotation.run_pending()
            shown = bob.get(f"{ROTATIONS}/{ceremony}")
            listed = [c for c in bob.get(ROTATIONS).json() if c["id"] == ceremony]
        assert shown.status_code == 200, shown.text
        data = shown.json()
        assert listed == [data]
        assert data["state"] == "running"
        assert data["stuck_tokens"] == [row.id]
        assert "restore" in data["stuck_action"]
        assert "delete" in data["stuck_action"]
    _show_ceremony(data)
    printed = capsys.readouterr().out
    assert "CANNOT COMPLETE" in printed
    assert row.id in printed
    assert "docs/key-ceremony.md" in printed
