"""Fixtures of the evidence tests shared by several files."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.databases import migrated_engine
from tests.support.vault_evidence import export_response

PAN = "4111111111111111"


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> Iterator[tuple[VaultServer, Path, bytes]]:
    tmp = tmp_path_factory.mktemp("boundaries")
    with running_vault(tmp, hsm_provider) as vault:
        started = datetime.now(UTC) - timedelta(seconds=5)
        with vault.client("payments") as client:
            for _ in range(12):
                body = {"pan": PAN, "format": "uuid"}
                assert client.post("/v1/tokenize", json=body).status_code in (200, 201)
        response = export_response(vault, started)
        assert response.status_code == 200, response.text
        bundle = tmp / "bundle.tar.gz"
        bundle.write_bytes(response.content)
        yield vault, bundle, hsm_provider.public_key_pem("cofre-audit-v1")


@pytest.fixture
def vault(tmp_path: Path, hsm_provider: HSMProvider, database_url: str) -> Iterator[VaultServer]:
    """A vault of its own for each test, on SQLite and on PostgreSQL (`database_url`)."""
    with running_vault(tmp_path / "vault", hsm_provider, database_url) as server:
        yield server


@pytest.fixture
def engine(migrated_database: None, database_url: str) -> Iterator[Engine]:
    """A migrated database of its own for each test, on SQLite and on PostgreSQL."""
    with migrated_engine(database_url) as engine:
        yield engine
