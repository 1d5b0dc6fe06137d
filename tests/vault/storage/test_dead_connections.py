"""PostgreSQL's pool does not ping a connection at checkout (issue 21: a round trip per
checkout). Pooled connections that died under it (PostgreSQL restarted, a middle box
dropped them) cost at most one operation a 503 `StorageUnavailable`, never a raw driver
error (the API's 500), that operation writes nothing, and the pool then starts afresh."""

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
def test_dead_pooled_connections_fail_at_most_one_operation_with_a_503(
    service: VaultService, engine: Engine
) -> None:
    record = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random"))
    before = _tokens(engine)
    assert engine.pool.checkedin() >= 2  # the pool holds connections that will die
    assert _terminate_backends(engine) >= 2

    # The first operation to meet a dead connection fails with a 503, or succeeds if
    # its group ran again on a fresh connection before anything was committed; either
    # way, every connection the pool had is then replaced at once, not one by one.
    cards = [Pan("5500000000000004"), Pan("378282246310005"), Pan("6011111111111117")]
    stored, failed = 0, 0
    for card in cards:
        try:
            service.tokenize(PAYMENTS, TokenizeRequest(card, "card_random"))
        except StorageUnavailable:
            failed += 1
        else:
            stored += 1
    assert failed <= 1
    assert service.detokenize(GETNET, record.token).pan == VISA
    assert _tokens(engine) == before + stored
