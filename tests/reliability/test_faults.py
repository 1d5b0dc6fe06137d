"""Faults under a running vault (`cofre serve` on PostgreSQL): the database stopped
mid-load, the audit write failing. Each answers 503 problem+json with its code, writes
nothing partial, and the vault recovers by itself when the fault clears."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.reliability.conftest import VaultProcess, make_vault
from tests.support.postgres import PostgresCluster
from tests.support.softhsm import SoftHSMToken
from vault.pan import luhn_check_digit
from vault.storage.database import create_database_engine


def _pan(i: int) -> str:
    body = f"6{i:014d}"
    return body + luhn_check_digit(body)


def _counts(url: str) -> tuple[int, int]:
    engine = create_database_engine(url)
    try:
        with engine.connect() as c:
            tokens = c.execute(sa.text("SELECT count(*) FROM tokens")).scalar_one()
            audited = c.execute(
                sa.text(
                    "SELECT count(*) FROM tokens t WHERE EXISTS (SELECT 1 FROM audit_entries a "
                    "WHERE a.payload LIKE '%' || t.id || '%')"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    return int(tokens), int(audited)


@pytest.fixture
def vault_on_pg(
    tmp_path: Path, softhsm_token: SoftHSMToken, durable_postgres: PostgresCluster
) -> tuple[VaultProcess, PostgresCluster]:
    vault = make_vault(tmp_path / "v", softhsm_token, durable_postgres.sqlalchemy_url())
    vault.start()
    yield vault, durable_postgres  # type: ignore[misc]
    vault.stop()


def test_postgres_stopped_mid_load(vault_on_pg: tuple[VaultProcess, PostgresCluster]) -> None:
    vault, cluster = vault_on_pg
    statuses: list[tuple[int, str]] = []
    acked: list[tuple[str, str]] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        with vault.client(timeout=20) as client:
            while not stop.is_set():
                pan = _pan(i)
                i += 1
                response = client.post("/v1/tokenize", json={"pan": pan, "format": "pan_last4"})
                code = response.json().get("code", "") if response.status_code != 200 else ""
                statuses.append((response.status_code, code))
                if response.status_code == 200:
                    acked.append((pan, response.json()["token"]))
                else:
                    assert response.headers["content-type"].startswith("application/problem+json")

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(1.0)
    cluster.stop("immediate")
    time.sleep(2.0)
    with vault.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["code"] == "storage_unavailable"
    cluster.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not statuses or statuses[-1][0] != 200):
        time.sleep(0.2)
    time.sleep(0.5)
    stop.set()
    thread.join()
    failures = {code for status, code in statuses if status != 200}
    assert failures, "the outage was not observed"
    assert failures <= {"storage_unavailable", "audit_unavailable"}, failures
    assert all(s in (200, 503) for s, _ in statuses)
    assert statuses[-1][0] == 200  # recovered without a restart
    with vault.client("getnet-adapter") as client:
        for pan, token in acked:
            assert client.post("/v1/detokenize", json={"token": token}).json()["pan"] == pan
    tokens, audited = _counts(cluster.sqlalchemy_url())
    assert tokens == audited  # nothing partial: every stored token has its audit entry


def test_audit_write_failing(vault_on_pg: tuple[VaultProcess, PostgresCluster]) -> None:
    vault, cluster = vault_on_pg
    engine = create_database_engine(cluster.sqlalchemy_url())
    try:
        with engine.begin() as c:
            c.execute(
                sa.text(
                    "ALTER TABLE audit_entries ADD CONSTRAINT audit_down CHECK (false) NOT VALID"
                )
            )
        before = _counts(cluster.sqlalchemy_url())
        with vault.client() as client:
            response = client.post("/v1/tokenize", json={"pan": _pan(99), "format": "uuid"})
        assert response.status_code == 503
        assert response.json()["code"] == "audit_unavailable"
        assert "token" not in response.json()
        assert _counts(cluster.sqlalchemy_url()) == before
        with engine.begin() as c:
            c.execute(sa.text("ALTER TABLE audit_entries DROP CONSTRAINT audit_down"))
        with vault.client() as client:
            assert (
                client.post("/v1/tokenize", json={"pan": _pan(99), "format": "uuid"}).status_code
                == 200
            )
    finally:
        engine.dispose()
