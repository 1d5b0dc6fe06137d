"""The audit sequencer's lock held by a node that hung mid-transaction, under a running
`cofre serve` on a real PostgreSQL: operations are still answered (each entry durably
queued), readiness and the log name the stall, and the queue drains by itself once the
lock is released (docs/operations.md, Incident: audit queue stalled)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import psycopg
import sqlalchemy as sa

from audit.sequencer import SEQUENCER_LOCK_KEY
from tests.support.pans import card_number
from tests.support.postgres import PostgresCluster, free_port
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault
from vault.storage.database import create_database_engine

# docs/operations.md, "Incident: audit queue stalled", step 1, as written there.
RUNBOOK_HOLDER_QUERY = (
    "SELECT a.pid, a.client_addr, a.application_name, a.state, a.xact_start FROM pg_locks l "
    "JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' AND l.classid = 67 "
    "AND l.objid = 1868984933 AND l.objsubid = 1 AND l.granted"
)


def _pan(i: int) -> str:
    return card_number("5", i)


def test_sequencer_lock_held_by_a_hung_node_is_named_and_recovers(
    tmp_path: Path, softhsm_token: SoftHSMToken, durable_postgres: PostgresCluster
) -> None:
    """Another node's sequencer froze inside its transaction (SIGSTOP, a VM paused, a
    network partition PostgreSQL has not noticed): it keeps the advisory lock, so this
    node's sequencer finds it taken on every tick and integrates nothing. Operations
    are still answered, each with its entry durably queued in its own transaction, but
    no head covers them: readiness must name the stall (without failing: every node
    would fail it at once), the log must say it once, and the queue drain by itself once
    the lock is released."""
    url = durable_postgres.sqlalchemy_url()
    vault = make_vault(tmp_path / "v", softhsm_token, url)
    vault.env["COFRE_AUDIT__QUEUE_STALL_SECONDS"] = "1"
    vault.env["COFRE_LOG_LEVEL"] = "INFO"  # "audit queue drained" is an info line
    vault.start()
    hung = psycopg.connect(durable_postgres.dsn(), application_name="hung-node")
    try:
        hung.execute("SELECT pg_advisory_xact_lock(%s)", (SEQUENCER_LOCK_KEY,))
        with vault.client() as client:
            for i in range(3):
                response = client.post(
                    "/v1/tokenize", json={"pan": _pan(200 + i), "format": "uuid"}
                )
                assert response.status_code == 200, response.text
            deadline = time.monotonic() + 30
            while True:
                ready = client.get("/readyz")
                assert ready.status_code == 200  # informs, never fails readiness
                note = ready.json()["checks"]["audit_sequencer"]
                if note != "ok":
                    break
                assert time.monotonic() < deadline, "readiness never named the stall"
                time.sleep(0.2)
        assert "queued" in note, note
        assert "lock is held elsewhere" in note, note
        assert "audit queue stalled" in vault.log.read_text(errors="replace")
        # The runbook's steps: find the holder, end its session.
        with psycopg.connect(durable_postgres.dsn(), autocommit=True) as admin:
            holders = admin.execute(RUNBOOK_HOLDER_QUERY).fetchall()
            assert [(pid, state) for pid, _, _, state, _ in holders] == [
                (hung.info.backend_pid, "idle in transaction")
            ]
            admin.execute("SELECT pg_terminate_backend(%s)", (hung.info.backend_pid,))
    finally:
        hung.close()
    deadline = time.monotonic() + 30
    with vault.client() as client:
        while client.get("/readyz").json()["checks"]["audit_sequencer"] != "ok":
            assert time.monotonic() < deadline, "the stall was never cleared"
            time.sleep(0.2)
    engine = create_database_engine(url)
    try:
        with engine.connect() as c:
            assert c.execute(sa.text("SELECT count(*) FROM audit_queue")).scalar_one() == 0
    finally:
        engine.dispose()
    assert "audit queue drained" in vault.log.read_text(errors="replace")


def _gauges(metrics_port: int) -> dict[str, float]:
    """The audit queue's gauges in the node's ``/metrics`` (Prometheus text)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    for _ in range(600):  # the listener binds as the worker starts; bounded, not timed
        try:
            text = httpx.get(url, timeout=10).text
            break
        except httpx.ConnectError:
            time.sleep(0.05)
    else:
        text = httpx.get(url, timeout=10).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("cofre_audit_queue_"):
            found[name.split("{", 1)[0]] = float(value)
    return found


def test_a_stalled_queue_shows_in_the_metrics_an_alert_reads(
    tmp_path: Path, softhsm_token: SoftHSMToken, durable_postgres: PostgresCluster
) -> None:
    """Readiness and the log name a stall, but an alert rule reads metrics: while the
    sequencer lock is held elsewhere, ``/metrics`` reports how many entries wait and how
    long the oldest has waited (the alert in docs/operations.md, "What to watch"), and
    both fall back to 0 once the queue drains."""
    url = durable_postgres.sqlalchemy_url()
    vault = make_vault(tmp_path / "v", softhsm_token, url)
    metrics_port = free_port()
    vault.env["COFRE_SERVER__METRICS_PORT"] = str(metrics_port)
    vault.start()
    try:
        stalled = _stalled_gauges(vault, metrics_port, durable_postgres)
        deadline = time.monotonic() + 30
        while True:  # the lock is released: the next tick drains the queue
            drained = _gauges(metrics_port)
            if drained.get("cofre_audit_queue_depth") == 0:
                break
            assert time.monotonic() < deadline, f"the queue never drained: {drained}"
            time.sleep(0.2)
    finally:
        vault.stop()
    assert stalled["cofre_audit_queue_depth"] >= 3, stalled
    assert drained["cofre_audit_queue_oldest_seconds"] == 0, drained


def _stalled_gauges(
    vault: VaultProcess, metrics_port: int, postgres: PostgresCluster
) -> dict[str, float]:
    """Hold the sequencer lock as a hung node would, tokenize three cards, and return
    the gauges once the oldest queued entry has waited a second; the lock is released
    on return."""
    with psycopg.connect(postgres.dsn(), application_name="hung-node") as hung:
        hung.execute("SELECT pg_advisory_xact_lock(%s)", (SEQUENCER_LOCK_KEY,))
        with vault.client() as client:
            for i in range(3):
                response = client.post(
                    "/v1/tokenize", json={"pan": _pan(300 + i), "format": "uuid"}
                )
                assert response.status_code == 200, response.text
        deadline = time.monotonic() + 30
        while True:  # bounded: fails only if the gauges never show the stall
            gauges = _gauges(metrics_port)
            if gauges.get("cofre_audit_queue_oldest_seconds", 0.0) >= 1:
                return gauges
            assert time.monotonic() < deadline, f"the metrics never showed the stall: {gauges}"
            time.sleep(0.2)
