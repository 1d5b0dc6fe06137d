"""A deleted token's row written back from a backup, and revealed (session 38, ev38).

A writer of the vault's database who holds no HSM PIN puts a deleted token's old card
columns back over its tombstone while the data key it was sealed under is still live:
the card opens again (the vault does not read the log on every reveal; the bound of
tests/vault/test_bak38_restored_backup.py and docs/threat-model.md, "A deleted token
restored from a backup"). The audit log shows it, a successful reveal of a token id
after the entry that deleted it, and the period's evidence bundle VERIFIED. Check 6e
(`cofre_evidence_verifier.deleted_tokens`) now fails it, naming the token id and both
leaf indices. The genuine path (a refused reveal after the delete, the same card
tokenized again: a new token id) still verifies.

Real SoftHSM2, SQLite and PostgreSQL, the vault over mTLS, the real exporter, the
verifier's CLI.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.api.conftest import VaultServer
from tests.support.backups import backup, restore_row
from tests.support.pans import card_number
from tests.support.vault_evidence import (
    audit_entries,
    export_to,
    members,
    verifier_cli,
    verify_by_vault_key,
)

PAN = card_number("453201", 38800)


def _entry_index(bundle: Path, action: str, token_id: str) -> int:
    """The leaf index of the bundle's last successful `action` entry naming `token_id`."""
    found = [
        line["index"]
        for line in audit_entries(members(bundle))
        if (entry := json.loads(str(line["payload"])))["action"] == action
        and entry["outcome"] == "success"
        and entry["token_id"] == token_id
    ]
    index = found[-1]
    assert isinstance(index, int)
    return index


def _tokenize(vault: VaultServer) -> str:
    with vault.client("payments") as client:
        answer = client.post("/v1/tokenize", json={"pan": PAN, "format": "pan_bin6_last4"})
    assert answer.status_code in {200, 201}, answer.text
    token: str = answer.json()["token"]
    return token


def _delete(vault: VaultServer, token: str) -> None:
    with vault.client("payments") as client:
        assert client.delete(f"/v1/tokens/{token}").status_code in {200, 204}
    with vault.client("settlement") as client:
        refused = client.post("/v1/detokenize", json={"token": token})
    assert refused.status_code == 404, refused.text  # audited as a refusal: not counted


def test_a_deleted_token_revealed_after_its_row_was_written_back_fails_the_bundle(
    vault: VaultServer, tmp_path: Path
) -> None:
    since = datetime.now(UTC) - timedelta(hours=1)
    token = _tokenize(vault)
    row, _ = backup(vault.runtime.engine, token)
    _delete(vault, token)
    restore_row(vault.runtime.engine, row)
    with vault.client("settlement") as client:
        revealed = client.post("/v1/detokenize", json={"token": token})
    assert revealed.status_code == 200, revealed.text  # the bound: the card opens again
    assert revealed.json()["pan"] == PAN
    bundle = export_to(vault, since, tmp_path / "revived.tar.gz")
    deleted_at = _entry_index(bundle, "delete", row["id"])
    revealed_at = _entry_index(bundle, "detokenize", row["id"])
    assert deleted_at < revealed_at
    report = verify_by_vault_key(bundle, vault)
    assert not report.ok, "a deleted token's reveal was VERIFIED"
    [line] = [p for p in report.problems if p.startswith("deleted tokens:")]
    assert f"entry {revealed_at} (detokenize, success) reveals token {row['id']}" in line, line
    assert f"which entry {deleted_at} (delete) shredded" in line, line
    assert "deleted_tokens" not in report.passed_checks
    pem = tmp_path / "audit.pem"
    pem.write_bytes(vault.runtime.sequencer.signer.public_key_pem())
    result = verifier_cli(bundle, pem)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("FAILED\n")
    assert f"reveals token {row['id']}" in result.stdout
    assert PAN not in result.stdout + result.stderr


def test_a_deleted_token_refused_and_its_card_tokenized_again_verifies(
    vault: VaultServer, tmp_path: Path
) -> None:
    since = datetime.now(UTC) - timedelta(hours=1)
    token = _tokenize(vault)
    _delete(vault, token)
    again = _tokenize(vault)
    assert again != token
    with vault.client("settlement") as client:
        assert client.post("/v1/detokenize", json={"token": again}).status_code == 200
    with vault.client("payments") as client:
        assert client.get(f"/v1/tokens/{again}").status_code == 200
    bundle = export_to(vault, since, tmp_path / "genuine.tar.gz")
    report = verify_by_vault_key(bundle, vault)
    assert report.ok, report.problems
    [line] = [c for c in report.checks if c.startswith("deleted tokens:")]
    assert line.startswith("deleted tokens: 1 tokens deleted"), line
