"""Review 36b: check 6d ties a key registration to its ceremony's start, which the vault
writes in the same transaction, but each audit entry took its own time, and a period
is chosen by time: a period that ended between the two (a month's end while the start
counted the rows to re-wrap) held the registration without its start, and the genuine
rotation's bundle FAILED as "a key put into use with no officer's approval". Both now
carry one time, so a period holds both or neither.

Real SoftHSM2 (the session's rotation token), the real exporter and verifier.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from audit.schema import audit_entries
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.vault_evidence import verify_by_vault_key, whole_log


@pytest.fixture
def vault(tmp_path: Path, rotation_provider: HSMProvider) -> Iterator[VaultServer]:
    with running_vault(tmp_path / "vault", rotation_provider) as server:
        yield server


def _times(vault: VaultServer, action: str) -> list[datetime]:
    with vault.runtime.engine.connect() as connection:
        rows = connection.execute(select(audit_entries.c.payload, audit_entries.c.created_at))
        return [at for payload, at in rows if json.loads(payload)["action"] == action]


def test_a_period_never_ends_between_a_registration_and_its_start(
    vault: VaultServer, rotation_provider: HSMProvider, tmp_path: Path
) -> None:
    before = {key.label for key in rotation_provider.list_keys()}
    try:
        _rotate_and_export(vault, tmp_path)
    finally:
        # The session's rotation token keeps no key of this test's: another vault on it
        # would adopt it at its first start (test_aud36_key_registration.py counts keys).
        for key in rotation_provider.list_keys():
            if key.label not in before:
                rotation_provider.destroy_key(key.label)


def _rotate_and_export(vault: VaultServer, tmp_path: Path) -> None:
    since = whole_log()
    vault.approved_rotation("kek")
    [started] = _times(vault, "key.rotation.start")
    # The period that ends at the start (the latest end that would split them).
    end = started if started.tzinfo else started.replace(tzinfo=UTC)
    body = {"from": since.isoformat(), "to": end.isoformat()}
    with vault.client("auditor") as auditor:
        response = auditor.post("/v1/evidence", json=body)
    assert response.status_code == 200, response.text
    bundle = tmp_path / "split.tar.gz"
    bundle.write_bytes(response.content)
    report = verify_by_vault_key(bundle, vault)
    assert not [p for p in report.problems if p.startswith("key registrations:")], report.problems
