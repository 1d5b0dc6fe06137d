"""Faults as the on-call meets them (docs/operations.md, "Failure behaviour" and "What to
watch"), against `cofre serve` on a real PostgreSQL: its connection limit exhausted, a
lock an operator holds on a table the vault writes.
The test checks what callers get, what `/readyz` and the log say, and that the vault
recovers alone when the fault ends."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
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


OPERATIONS = Path(__file__).parents[2] / "docs" / "operations.md"


def _runbook_blockers_query() -> str:
    """docs/operations.md, "Incident: 503 storage_unavailable while `/readyz` is 200",
    step 1, as written there (the query an on-call copies)."""
    text = OPERATIONS.read_text(encoding="utf-8")
    section = text.split("### Incident: 503 storage_unavailable while `/readyz` is 200")[1]
    step = section.split("1. Find the holder:")[1].split("`")[1]
    return " ".join(step.split()).rstrip(";")


def _blockers(cluster: PostgresCluster, deadline: float) -> list[tuple[int, str, str]]:
    """The runbook's query, asked until a session waits on a lock: who blocks it (pid,
    application name, state)."""
    query = _runbook_blockers_query()
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        while not (holders := admin.execute(query).fetchall()):
            assert time.monotonic() < deadline, "the runbook's query found no holder"
            time.sleep(0.05)
    return [(pid, app, state) for pid, _, app, _, state, _ in holders]


def test_a_lock_an_operator_holds_is_a_bounded_503_whose_cause_the_log_names(
    tmp_path: Path, softhsm_token: SoftHSMToken, durable_postgres: PostgresCluster
) -> None:
    """Drill 36: an operator's `LOCK TABLE tokens` in an open psql transaction. Every
    tokenize waits on it up to the statement timeout and is answered `503
    storage_unavailable`, while `/readyz` stays 200 (its `SELECT 1` takes no lock on a
    table). The cause, `(QueryCanceled)`, was in the answers' bodies alone: the `request`
    log line said `storage_unavailable` as for a stopped database. It now says the
    cause, and the runbook's query names the holder."""
    url = durable_postgres.sqlalchemy_url()
    vault = make_vault(tmp_path / "v", softhsm_token, url)
    vault.env.update(
        {
            "COFRE_SERVER__WORKERS": "2",
            "COFRE_DATABASE__STATEMENT_TIMEOUT_MS": "1000",
            "COFRE_LOG_LEVEL": "INFO",  # the `request` lines
        }
    )
    vault.start()
    before = _counts(url)
    answers: list[httpx.Response] = []
    done = threading.Event()

    def tokenize_until_done() -> None:
        with vault.client(timeout=60) as client:
            i = 0
            while not done.is_set():
                i += 1
                pan = _pan(300 + i)
                answers.append(client.post("/v1/tokenize", json={"pan": pan, "format": "uuid"}))

    operator = psycopg.connect(durable_postgres.dsn(), application_name="operator-psql")
    sender = threading.Thread(target=tokenize_until_done)
    try:
        operator.execute("LOCK TABLE tokens IN ACCESS EXCLUSIVE MODE")
        sender.start()
        deadline = time.monotonic() + 60
        assert _blockers(durable_postgres, deadline) == [
            (operator.info.backend_pid, "operator-psql", "idle in transaction")
        ]
        with vault.client() as client:
            assert client.get("/readyz").status_code == 200  # readiness does not see it
        while not answers:
            assert time.monotonic() < deadline, "no answer under the lock"
            time.sleep(0.05)
    finally:
        done.set()
        sender.join(timeout=120)
        operator.rollback()
        operator.close()
    under_lock = answers[0]
    assert under_lock.status_code == 503, under_lock.text
    assert under_lock.headers["content-type"].startswith(PROBLEM)
    assert under_lock.json()["code"] == "storage_unavailable"
    assert "QueryCanceled" in under_lock.json()["detail"]
    lines = [json.loads(line) for line in vault.log.read_text().splitlines() if line.strip()]
    refused = [
        line
        for line in lines
        if line.get("event") == "request" and line.get("code") == "storage_unavailable"
    ]
    assert refused, "no request line for the refused tokenize"
    assert all("(QueryCanceled)" in line.get("detail", "") for line in refused), refused
    with vault.client() as client:
        assert client.post("/v1/tokenize", json={"pan": _pan(999), "format": "uuid"}).is_success
    tokens, audited = _counts(url)
    accepted = sum(1 for answer in answers if answer.is_success)
    assert tokens == audited == before[0] + accepted + 1  # nothing partial under the lock
