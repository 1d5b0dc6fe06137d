from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from vault.signing import HSMTreeHeadSigner
from vault.storage.database import create_database_engine, migrate


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_database_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def signer(hsm_provider: HSMProvider) -> HSMTreeHeadSigner:
    return HSMTreeHeadSigner(hsm_provider, "cofre-audit-v1")
