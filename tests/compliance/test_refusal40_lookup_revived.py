"""A deleted token's row written back from a backup, found by its card (session 40; the
bound session 39 left in check 6e, `cofre_evidence_verifier.deleted_tokens`).

A writer of the vault's database who holds no HSM PIN puts a deleted token's old row
back over its tombstone (tests/compliance/test_ev38_deleted_token_revealed.py). A
`lookup` of the card then answers the deleted token again; but a lookup's entry named no
token id (only how many it found), so check 6e, which fails a bundle in which a
successful entry names a token after its delete, saw nothing and the bundle VERIFIED.
Now a lookup writes one entry per token it answers, naming its id (as a batch writes one
per item), and the check fails the bundle naming the lookup's entry. A lookup that finds
nothing, and one that finds the card's new token, still verify.

Real SoftHSM2, SQLite and PostgreSQL, the vault over mTLS, the real exporter.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.api.conftest import VaultServer
from tests.support.backups import backup, restore_row
from tests.support.pans import card_number
from tests.support.vault_evidence import audit_entries, export_to, members, verify_by_vault_key

PAN = card_number("453201", 40400)
FORMAT = "pan_bin6_last4"


def _entries(bundle: Path, action: str) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for line in audit_entries(members(bundle)):
        entry = json.loads(str(line["payload"]))
        if entry["action"] == action:
            out.append((int(str(line["index"])), entry))
    return out


def _tokenize(vault: VaultServer) -> str:
    with vault.client("payments") as client:
        answer = client.post("/v1/tokenize", json={"pan": PAN, "format": FORMAT})
    assert answer.status_code in {200, 201}, answer.text
    token: str = answer.json()["token"]
    return token


def _lookup(vault: VaultServer) -> list[str]:
    with vault.client("payments") as client:
        answer = client.post("/v1/lookup", json={"pan": PAN, "format": FORMAT})
    assert answer.status_code == 200, answer.text
    return [t["token"] for t in answer.json()["tokens"]]


def test_a_deleted_token_found_by_its_card_after_its_row_was_written_back_fails(
    vault: VaultServer, tmp_path: Path
) -> None:
    since = datetime.now(UTC) - timedelta(hours=1)
    token = _tokenize(vault)
    assert _lookup(vault) == [token]
    row, _ = backup(vault.runtime.engine, token)
    with vault.client("payments") as client:
        assert client.delete(f"/v1/tokens/{token}").status_code in {200, 204}
    assert _lookup(vault) == []
    restore_row(vault.runtime.engine, row)
    assert _lookup(vault) == [token]  # the bound: the written-back row answers
    bundle = export_to(vault, since, tmp_path / "revived.tar.gz")

    lookups = _entries(bundle, "lookup")
    # Each lookup entry names the token it answered, or none when it found none.
    assert [e["token_id"] for _, e in lookups] == [row["id"], None, row["id"]]
    assert [e["details"]["found"] for _, e in lookups] == [1, 0, 1]
    (deleted_at, _), *_ = _entries(bundle, "delete")
    found_at = lookups[-1][0]
    report = verify_by_vault_key(bundle, vault)
    assert not report.ok, "a deleted token found by a lookup was VERIFIED"
    [line] = [p for p in report.problems if p.startswith("deleted tokens:")]
    assert f"entry {found_at} (lookup, success) reveals token {row['id']}" in line, line
    assert f"which entry {deleted_at} (delete) shredded" in line, line


def test_a_lookup_of_the_card_tokenized_again_verifies(vault: VaultServer, tmp_path: Path) -> None:
    since = datetime.now(UTC) - timedelta(hours=1)
    token = _tokenize(vault)
    with vault.client("payments") as client:
        assert client.delete(f"/v1/tokens/{token}").status_code in {200, 204}
    assert _lookup(vault) == []
    again = _tokenize(vault)
    assert _lookup(vault) == [again]
    bundle = export_to(vault, since, tmp_path / "genuine.tar.gz")
    report = verify_by_vault_key(bundle, vault)
    assert report.ok, report.problems
