"""PostgreSQL's pool does not ping a connection at checkout (issue 21: a round trip per
checkout). A pooled connection that died under it (PostgreSQL restarted, a middle box
dropped it) costs one operation a 503 `StorageUnavailable`, never a raw driver error
(the API's 500), writes nothing, and the pool then starts afresh."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import Engine, text

from tests.vault.conftest import GETNET, PAYMENTS
from vault.errors import StorageUnavailable
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService

VISA = Pan("4111111111111111")


def _terminate_backends(engine: Engine) -> int:
    """Kill every server process of the engine's database but our own (as a restart
    would), from a connection outside the pool; how many there were."""
    url = engine.url
    with psycopg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        dbname=url.database,
        autocommit=True,
    ) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def _tokens(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM tokens")).scalar_one())


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_dead_pooled_connection_fails_one_operation_with_a_503_and_nothing_written(
    service: VaultService, engine: Engine
) -> None:
    record = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random"))
    before = _tokens(engine)
    assert engine.pool.checkedin() >= 2  # the pool holds connections that will die
    assert _terminate_backends(engine) >= 2

    with pytest.raises(StorageUnavailable):
        service.tokenize(PAYMENTS, TokenizeRequest(Pan("5500000000000004"), "card_random"))

    # Every connection the pool had is replaced after the first failure, not one by one.
    assert service.detokenize(GETNET, record.token).pan == VISA
    again = service.tokenize(PAYMENTS, TokenizeRequest(Pan("5500000000000004"), "card_random"))
    assert again.token != record.token
    assert _tokens(engine) == before + 1
