"""Readiness under pool pressure (review 36, the Kubernetes review).

The readiness check read the database on the shared pool (`engine.connect()`): with
every pooled connection held by the load (requests waiting on a lock, a long
statement), it waited the pool timeout (10 s) for one, past the kubelet probe's 3 s, and
then failed with ``storage_unavailable``. Every pod under the same load went unready at
once: a load spike became an outage. Readiness now reads on connections of its own
(`vault.storage.database.readiness_connections`): it says whether the database answers,
not whether the pool is busy."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, text

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.vault.conftest import TEST_POLICY
from vault.service import VaultService
from vault.storage.database import create_database_engine
from vault.storage.schema_version import migrate


@pytest.fixture
def small_pool(pg_database: str) -> Iterator[Engine]:
    engine = create_database_engine(pg_database, pool_size=1)  # 1 + 1 overflow
    migrate(engine)
    yield engine
    engine.dispose()


def test_readiness_answers_while_the_load_holds_every_pooled_connection(
    small_pool: Engine, hsm_provider: HSMProvider
) -> None:
    service = VaultService(
        small_pool, hsm_provider, PolicyEngine(parse_policy(TEST_POLICY, kind="toml").policy)
    )
    service.initialize()
    held: list[Connection] = []
    try:
        service.check_ready()  # ready before the load
        # The load: every connection the pool may open, each in a transaction.
        for _ in range(2):
            connection = small_pool.connect()
            connection.execute(text("SELECT 1"))
            held.append(connection)
        answer: list[object] = []
        thread = threading.Thread(target=lambda: answer.append(_checked(service)), daemon=True)
        thread.start()
        thread.join(120)  # fails only on a hang
        assert not thread.is_alive()
        assert answer == [{"hsm": "ok", "database": "ok", "key_registry": "ok"}]
    finally:
        for connection in held:
            connection.close()
        service.close()


def _checked(service: VaultService) -> object:
    try:
        return service.check_ready()
    except Exception as exc:  # noqa: BLE001 - the answer under test
        return f"{type(exc).__name__}: {exc}"
