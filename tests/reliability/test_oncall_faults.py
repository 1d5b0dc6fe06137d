"""Faults as the on-call meets them (docs/operations.md, "Failure behaviour" and "What to
watch"), against `cofre serve` on a real PostgreSQL: its connection limit exhausted.
The test checks what callers get, what `/readyz` and the log say, and that the vault
recovers alone when the fault ends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.audit_trail import tokens_and_audited
from tests.support.leakguard import LeakGuard, dump_database
from tests.support.pans import card_number
from tests.support.postgres import PostgresCluster
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import make_vault

PROBLEM = "application/problem+json"
# A cluster small enough to fill: the vault's pools, our fillers, nothing else.
MAX_CONNECTIONS = 24


def _pan(i: int) -> str:
    return card_number("5", i)


_counts = tokens_and_audited


@pytest.fixture
def small_postgres(leak_guard: LeakGuard) -> Iterator[PostgresCluster]:
    cluster = PostgresCluster.create(max_connections=MAX_CONNECTIONS)
    cluster.start()
    try:
        yield cluster
        dump_database(cluster.dsn(), "postgres", cluster.bindir, leak_guard.dumps)
    finally:
        cluster.keep_log(leak_guard.dumps)
        cluster.destroy()


def _take_every_slot(cluster: PostgresCluster) -> list[psycopg.Connection]:
    """Hold every connection slot of `cluster`, the vault's closed: its pooled
    connections are terminated and each freed slot is taken before it reconnects."""
    held: list[psycopg.Connection] = []
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "could not take every connection slot"
        try:
            held.append(
                psycopg.connect(
                    cluster.dsn(), autocommit=True, connect_timeout=5, application_name="filler"
                )
            )
            continue
        except psycopg.OperationalError as exc:
            if "too many clients" not in str(exc):
                raise
        # Full: end the vault's connections (not ours) and fill again, until none is left.
        others = (
            held[0]
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND application_name <> 'filler'"
            )
            .fetchall()
        )
        if not others:
            return held


def test_connection_limit_exhausted_answers_503_names_it_and_recovers(
    tmp_path: Path, softhsm_token: SoftHSMToken, small_postgres: PostgresCluster
) -> None:
    url = small_postgres.sqlalchemy_url()
    vault = make_vault(tmp_path / "v", softhsm_token, url)
    vault.start()
    with vault.client() as client:
        assert client.post("/v1/tokenize", json={"pan": _pan(1), "format": "uuid"}).is_success
    before = _counts(url)
    held = _take_every_slot(small_postgres)
    try:
        # A bounded wait: the pool's connect attempt is refused at once by PostgreSQL.
        with vault.client(timeout=60) as client:
            answers = [
                client.post("/v1/tokenize", json={"pan": _pan(10 + i), "format": "pan_last4"})
                for i in range(3)
            ]
            ready = client.get("/readyz")
        for response in answers:
            assert response.status_code == 503, response.text
            assert response.headers["content-type"].startswith(PROBLEM)
            assert response.json()["code"] == "storage_unavailable"
        assert ready.status_code == 503
        assert ready.json()["code"] == "storage_unavailable"
        # The on-call can tell this from a stopped database: readiness and the log name
        # the cause.
        assert "too many connections" in ready.json()["detail"], ready.json()
        assert "OperationalError: too many connections" in vault.log.read_text(errors="replace")
    finally:
        for connection in held:
            connection.close()
    deadline = time.monotonic() + 30
    with vault.client() as client:
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the vault did not recover"
            time.sleep(0.2)
        assert client.post("/v1/tokenize", json={"pan": _pan(99), "format": "uuid"}).is_success
    tokens, audited = _counts(url)
    assert tokens == audited == before[0] + 1  # nothing written while refused
