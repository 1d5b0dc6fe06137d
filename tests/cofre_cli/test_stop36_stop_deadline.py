"""The stop of `cofre serve` (2 workers) while PostgreSQL does not answer (review 36).

A database that does not answer at all (here paused: SIGSTOP on its postmaster and
backends; in production a failover, a partition without a reset) left the stop waiting
on each step in turn, some without any bound (the ``process.stop`` entry's statement),
so the kubelet's grace period ended in a SIGKILL before the data keys were wiped and the
HSM session closed. The stop now runs against one deadline (`cofre_cli.stopping`): what
does not end in time is abandoned with a log line, and every worker wipes its keys.

Nothing here depends on how long anything takes: the test asserts what each worker did
and in which order; the waits are bounds that fail only on a hang."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.otlp import TELEMETRY_STOP_SECONDS
from cofre_cli.stopping import RELEASE_SECONDS, STOP_SECONDS
from tests.support.postgres import PostgresCluster, free_port
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import log_events, make_vault


@pytest.fixture
def own_postgres() -> Iterator[PostgresCluster]:
    """A cluster of this test's own: it is paused, and the suite's must go on answering."""
    cluster = PostgresCluster.create()
    cluster.start()
    yield cluster
    _signal_cluster(cluster, signal.SIGCONT)
    cluster.destroy()


def _cluster_pids(cluster: PostgresCluster) -> list[int]:
    postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                children.append(int(entry.name))
    return [postmaster, *children]


def _signal_cluster(cluster: PostgresCluster, signum: signal.Signals) -> None:
    for pid in _cluster_pids(cluster):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def test_a_stop_during_a_database_outage_wipes_the_keys_in_every_worker(
    tmp_path: Path, softhsm_token: SoftHSMToken, own_postgres: PostgresCluster
) -> None:
    vault = make_vault(tmp_path / "v", softhsm_token, own_postgres.sqlalchemy_url())
    health_port = free_port()
    vault.env.update(
        {
            "COFRE_SERVER__WORKERS": "2",
            "COFRE_SERVER__HEALTH_PORT": str(health_port),
            "COFRE_SERVER__DRAIN_TIMEOUT_SECONDS": "1",
            "COFRE_LOG_LEVEL": "INFO",
        }
    )
    vault.start()
    assert vault.process is not None
    _signal_cluster(own_postgres, signal.SIGSTOP)
    # A kubelet's probes during the outage: their checks wait on the database.
    for _ in range(4):
        with contextlib.suppress(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{health_port}/readyz", timeout=1.0)
    vault.process.send_signal(signal.SIGTERM)
    try:
        status = vault.process.wait(timeout=240)  # fails only on a hang
    except subprocess.TimeoutExpired:
        vault.kill()
        pytest.fail("cofre serve did not stop while the database was paused (no key wipe)")
    events = log_events(vault.log)
    stopped = [e for e in events if e.get("event") == "vault stopped"]
    assert sorted(str(e.get("worker")) for e in stopped) == ["0", "1"], stopped
    assert all(e.get("data_keys") == "wiped" for e in stopped)
    for worker in (0, 1):
        mine = [e for e in events if e.get("worker") == worker]
        names = [e.get("event") for e in mine]
        abandoned = [
            e.get("step")
            for e in mine
            if e.get("event") == "stop step abandoned at the stop deadline"
        ]
        # The entry that cannot be written is given up on, then the keys are wiped.
        assert "process.stop" in abandoned, names
        last_abandon = max(
            i for i, n in enumerate(names) if n == "stop step abandoned at the stop deadline"
        )
        assert last_abandon < names.index("vault stopped")
    assert status == 0


def test_the_stop_fits_the_margin_the_grace_period_leaves_after_the_drain() -> None:
    """tests/deploy/test_manifests.py leaves 15 s after the drain (its
    SHUTDOWN_MARGIN_SECONDS): the health listener's close (1 s), the steps before the
    wipe, the three releases after it and the telemetry's flush must fit in them."""
    health_close = 1 + 0.1  # `api.health`'s graceful timeout, after uvicorn's 0.1 s pause
    total = health_close + STOP_SECONDS + 3 * RELEASE_SECONDS + TELEMETRY_STOP_SECONDS
    assert total <= 15
