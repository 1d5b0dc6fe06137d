"""Review 34: the capture listener, which anyone on the internet reaches without a
client certificate, took its database connections from the pool the mTLS API uses
(`pool_size` and as many again) with more threads than the pool holds. Requests from
many addresses, each within its own limit, could hold every connection, and a
payments service's tokenize over mTLS then waited for one and failed 503.

The listener's database work now has a share of the pool (`COFRE_CAPTURE__MAX_IN_FLIGHT`,
half of it by default); a request that finds no place is answered `503 capture_busy`
at once, with `Retry-After`, counted and not written one by one.

The share is held deterministically: a lock on the sessions' table, which every page
load's read of its session must wait for while it holds its pooled connection (the
rate charge before it goes through the worker's one writer, `vault.storage.groupcommit`,
whose own connection comes from the same pool). No time is measured; the waits below
fail only on a hang."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from cofre.errors import ConfigurationError
from cofre.settings import CaptureSettings, DatabaseSettings, Settings
from cofre_cli.capture import capture_places
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.api.test_refusal_attacks import _entries
from tests.support.postgres import free_port
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import make_vault
from vault.capture import CaptureSessionRequest
from vault.operations.capture import ANONYMOUS_CAPTURE
from vault.service import CallContext

VISA = "4111111111111111"
SHOP = "https://shop.example"
PAYMENTS = CallContext("spiffe://cofre/payments", "req-test")
POOL_SIZE = 2  # the pool holds 2 x 2 connections; the listener's share is 2


@contextmanager
def _sessions_locked(url: str) -> Iterator[sa.Engine]:
    """Hold the capture sessions' table locked against reads for the block; yield an
    engine of the test's own to watch the database with."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection, connection.begin():
            connection.execute(sa.text("LOCK TABLE capture_sessions IN ACCESS EXCLUSIVE MODE"))
            yield engine
    finally:
        engine.dispose()


def _waiting_on_locks(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


def test_capture_traffic_cannot_take_the_pool_from_the_mtls_api(
    tmp_path: Path, hsm_provider: HSMProvider, pg_database: str
) -> None:
    database = DatabaseSettings.model_validate(
        {"url": pg_database, "pool_size": POOL_SIZE, "statement_timeout_ms": 120_000}
    )
    capture = CaptureSettings(port=free_port())
    with running_vault(tmp_path, hsm_provider, capture=capture, database=database) as vault:
        session = vault.runtime.service.create_capture_session(
            PAYMENTS, CaptureSessionRequest(origin=SHOP, formats=("pan_bin6_last4",))
        )
        page = f"/v1/hosted-fields/{session.session_id}"
        with vault.capture_client() as client:
            assert client.get(page).status_code == 200
        answers: list[httpx.Response] = []
        # As many page loads as the whole pool holds: before the fix each held a
        # connection while it waited for the table.
        loads = 2 * POOL_SIZE
        with _sessions_locked(pg_database) as watch:
            threads = [
                threading.Thread(target=_load, args=(vault, page, answers)) for _ in range(loads)
            ]
            for thread in threads:
                thread.start()
            # Each load either waits on the table or was answered. Before the fix the
            # pool runs out first (its writer's group, or a read, waits for a
            # connection): this wait then ends on its bound and the tokenize shows it.
            for _ in range(600):
                waiting = _waiting_on_locks(watch)
                if waiting >= POOL_SIZE and waiting + len(answers) >= loads:
                    break
                time.sleep(0.05)
            with vault.client("payments") as api:
                api.timeout = httpx.Timeout(60)  # the pool's own wait is 10 s
                tokenized = api.post("/v1/tokenize", json={"pan": VISA, "format": "pan_last4"})
            with vault.capture_client() as client:
                client.timeout = httpx.Timeout(60)  # before the fix: the pool's 10 s wait
                extra = client.post(
                    f"/v1/capture/{session.session_id}",
                    json={"secret": session.secret, "number": VISA, "expiry": "12/29"},
                    headers={"origin": SHOP},
                )
                preflight = client.options(
                    f"/v1/capture/{session.session_id}",
                    headers={"origin": SHOP, "access-control-request-method": "POST"},
                )
        # The lock was let go as its block ended: the held loads finish.
        for thread in threads:
            thread.join(60)
        counted = _busy_count(vault)
    # Written when the vault stopped: the listener's count, never an entry per refusal.
    entries = _entries(vault, ANONYMOUS_CAPTURE)
    assert tokenized.status_code == 200, tokenized.text
    busy = [a for a in answers if a.status_code == 503]
    assert len(busy) == loads - POOL_SIZE, [a.status_code for a in answers]
    for refused in (*busy, extra, preflight):
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "capture_busy"
        assert int(refused.headers["retry-after"]) >= 1
        assert "frame-ancestors 'none'" in refused.headers["content-security-policy"]
        assert refused.headers["x-content-type-options"] == "nosniff"
        assert "access-control-allow-origin" not in refused.headers
        assert VISA not in refused.text
    # The places came back: the held loads were answered once the row was free.
    assert [a.status_code for a in answers].count(200) == POOL_SIZE
    assert counted == len(busy) + 2
    assert not [e for e in entries if e["details"].get("code") == "capture_busy"]
    summaries = [e for e in entries if e["action"] == "capture.requests_refused"]
    assert sum(e["details"]["count"] for e in summaries) >= len(busy) + 2


def _load(vault: VaultServer, page: str, answers: list[httpx.Response]) -> None:
    with vault.capture_client() as client:
        client.timeout = httpx.Timeout(120)
        answers.append(client.get(page))


def _busy_count(vault: VaultServer) -> int:
    data = vault.metrics.get_metrics_data()
    if data is None:
        return 0
    return sum(
        int(p.value)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "cofre.capture.busy"
        for p in m.data.data_points  # type: ignore[union-attr]
    )


def test_the_share_defaults_to_half_the_pool_and_must_leave_the_api_some(tmp_path: Path) -> None:
    def share(**capture: int) -> int:
        settings = Settings(
            data_dir=tmp_path,
            database=DatabaseSettings(pool_size=8),
            capture=CaptureSettings(**capture),
        )
        return capture_places(settings)

    assert share() == 8  # the pool holds 8 and as many again
    assert share(max_in_flight=15) == 15
    with pytest.raises(ConfigurationError, match="COFRE_CAPTURE__MAX_IN_FLIGHT 16"):
        share(max_in_flight=16)


@pytest.mark.hsm
def test_cofre_serve_refuses_too_large_a_share_before_any_worker_starts(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    """Session 34's walk: with several workers (production's case) the check ran in each
    worker, after the node had started them: each printed a traceback and the node
    stopped because a worker ended, never with the `error [configuration_error]` line
    the docs promise. It is checked before any worker now, as the listeners' ports are."""
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    vault.env.update(
        {
            "COFRE_SERVER__WORKERS": "2",
            "COFRE_CAPTURE__PORT": str(free_port()),
            "COFRE_DATABASE__POOL_SIZE": "4",
            "COFRE_CAPTURE__MAX_IN_FLIGHT": "8",
        }
    )
    assert vault.cofre("db", "migrate").returncode == 0
    served = vault.cofre("serve")  # `cofre`'s bound ends a hang
    assert served.returncode == 1, served.stderr[-2000:]
    assert "error [configuration_error]" in served.stderr, served.stderr[-2000:]
    assert "COFRE_CAPTURE__MAX_IN_FLIGHT 8" in served.stderr
    assert "workers started" not in served.stderr + served.stdout
