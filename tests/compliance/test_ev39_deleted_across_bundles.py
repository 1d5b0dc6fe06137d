"""A token deleted in one period, its row written back, revealed in the next (session 39).

Check 6e (session 38) compared only a bundle's own entries: a writer of the database
who holds no HSM PIN waits for the period that deleted a token to be exported, puts the
row's card columns back over its tombstone (its data key still live), and the card
opens in the next period, whose bundle VERIFIED even chained to the first with
`--previous`. Each bundle now carries every token deleted before its period
(`audit/deleted_tokens.txt`, read from the vault's tombstones), and the verifier, given
the previous bundle, requires it to hold that bundle's list and the deletions of its
entries: the written-back row lost its tombstone, so the exporter leaves it out and the
chain fails, naming the token, the entry of the previous bundle that deleted it and the
reveal.

Real SoftHSM2, SQLite and PostgreSQL, the vault over mTLS, the real exporter, the
verifier's CLI.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.api.conftest import VaultServer
from tests.compliance.test_ev38_deleted_token_revealed import PAN, _delete, _entry_index, _tokenize
from tests.support.backups import backup, restore_row
from tests.support.vault_evidence import (
    export_response,
    export_to,
    members,
    resigned,
    verifier_cli,
    verify_unwitnessed,
)


def _chained(vault: VaultServer, previous: Path, out: Path) -> Path:
    """The bundle chained to `previous`, as `cofre evidence export --previous` asks."""
    manifest = json.loads(members(previous)["manifest.json"])
    response = export_response(
        vault,
        manifest["period"]["to"],
        previous_head=manifest["covering_head"],
        previous_end_index=manifest["entries"]["end_index"],
    )
    assert response.status_code == 200, response.text
    out.write_bytes(response.content)
    return out


def test_a_token_deleted_in_the_previous_period_and_revealed_fails_the_chain(
    vault: VaultServer, tmp_path: Path
) -> None:
    key = vault.runtime.sequencer.signer.public_key_pem()
    since = datetime.now(UTC) - timedelta(hours=1)
    token = _tokenize(vault)
    row, _ = backup(vault.runtime.engine, token)
    _delete(vault, token)
    first = export_to(vault, since, tmp_path / "first.tar.gz")
    deleted_at = _entry_index(first, "delete", row["id"])
    assert verify_unwitnessed(first, key).ok
    restore_row(vault.runtime.engine, row)
    with vault.client("settlement") as client:
        revealed = client.post("/v1/detokenize", json={"token": token})
    assert revealed.status_code == 200, revealed.text  # the bound: the card opens again
    second = _chained(vault, first, tmp_path / "second.tar.gz")
    revealed_at = _entry_index(second, "detokenize", row["id"])
    report = verify_unwitnessed(second, key, first)
    assert not report.ok, "a token deleted in the previous period revealed: VERIFIED"
    problems = [p for p in report.problems if p.startswith("deleted tokens:")]
    assert any(
        f"entry {revealed_at} (detokenize, success) reveals token {row['id']}" in p
        and f"entry {deleted_at} (delete) of the previous bundle" in p
        for p in problems
    ), problems
    # The exporter read no tombstone for it: the list left it out, which is named too.
    assert any(
        f"token {row['id']}, deleted by entry {deleted_at} (delete) of the previous bundle, "
        "is missing" in p
        for p in problems
    ), problems
    pem = tmp_path / "audit.pem"
    pem.write_bytes(key)
    result = verifier_cli(second, pem, first)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"reveals token {row['id']}" in result.stdout
    assert PAN not in result.stdout + result.stderr


def test_the_list_carries_earlier_deletions_and_a_genuine_chain_verifies(
    vault: VaultServer, tmp_path: Path
) -> None:
    key = vault.runtime.sequencer.signer.public_key_pem()
    since = datetime.now(UTC) - timedelta(hours=1)
    token = _tokenize(vault)
    row, _ = backup(vault.runtime.engine, token)
    _delete(vault, token)
    first = export_to(vault, since, tmp_path / "first.tar.gz")
    with vault.client("settlement") as client:  # refused: the vault holds
        assert client.post("/v1/detokenize", json={"token": token}).status_code == 404
    second = _chained(vault, first, tmp_path / "second.tar.gz")
    listed = members(second)["audit/deleted_tokens.txt"].decode().splitlines()
    assert listed == [row["id"]]
    assert members(first)["audit/deleted_tokens.txt"] == b""  # deleted in its own period
    report = verify_unwitnessed(second, key, first)
    assert report.ok, report.problems
    [line] = [c for c in report.checks if c.startswith("deleted tokens:")]
    assert "1 before it" in line, line
    # The exporter (who holds the HSM PIN and re-signs) leaves the deletion out: the
    # previous bundle shows it, and the chain fails naming it.
    omitted = resigned(
        vault, second, tmp_path / "omitted.tar.gz", {"audit/deleted_tokens.txt": b""}
    )
    report = verify_unwitnessed(omitted, key, first)
    assert not report.ok
    assert any(f"token {row['id']}, deleted by entry" in p for p in report.problems), (
        report.problems
    )
    # Without the previous bundle the list is the exporter's word alone: it still counts
    # (a reveal of a listed token fails), and the check line says it is unproven.
    alone = verify_unwitnessed(second, key)
    assert alone.ok, alone.problems


def test_a_written_back_row_answering_an_update_or_a_tokenize_fails_the_bundle(
    vault: VaultServer, tmp_path: Path
) -> None:
    """Session 38 counted four reveals: the written-back row answering a `token.update`
    (200, its metadata and life changed) and a convergent `tokenize` of its card (the
    deleted token again, found by its written-back fingerprint) verified."""
    since = datetime.now(UTC) - timedelta(hours=1)
    token = _tokenize(vault)
    row, _ = backup(vault.runtime.engine, token)
    _delete(vault, token)
    restore_row(vault.runtime.engine, row)
    with vault.client("payments") as client:
        updated = client.patch(f"/v1/tokens/{token}", json={"metadata": {"order": "2"}})
        again = client.post("/v1/tokenize", json={"pan": PAN, "format": "pan_bin6_last4"})
    assert updated.status_code == 200, updated.text
    assert again.status_code in {200, 201}, again.text
    bundle = export_to(vault, since, tmp_path / "answered.tar.gz")
    deleted_at = _entry_index(bundle, "delete", row["id"])
    updated_at = _entry_index(bundle, "token.update", row["id"])
    report = verify_unwitnessed(bundle, vault.runtime.sequencer.signer.public_key_pem())
    assert not report.ok, "a deleted token's row answered an update: VERIFIED"
    problems = [p for p in report.problems if p.startswith("deleted tokens:")]
    assert any(
        f"entry {updated_at} (token.update, success) reveals token {row['id']}, which entry "
        f"{deleted_at} (delete) shredded" in p
        for p in problems
    ), problems
    if again.json()["token"] == token:  # convergent: the old token answered again
        assert any(f"(tokenize, success) reveals token {row['id']}" in p for p in problems)
