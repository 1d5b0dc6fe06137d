"""Reliability tests run `cofre serve` processes (tests/support/vault_process.py) on
SQLite or on a durable PostgreSQL cluster (fsync on)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.leakguard import LeakGuard, dump_database
from tests.support.postgres import PostgresCluster, PostgresUnavailable, wait_until_reachable
from tests.support.vault_process import VaultProcess


@pytest.fixture(autouse=True)
def stop_vaults(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Whatever a test asserts, no `cofre serve` it started outlives it."""
    started: list[VaultProcess] = []
    original = VaultProcess.start

    def tracking_start(
        self: VaultProcess, timeout: float = 60, ready_path: str = "/readyz"
    ) -> None:
        started.append(self)
        original(self, timeout, ready_path)

    monkeypatch.setattr(VaultProcess, "start", tracking_start)
    yield
    for vault in started:
        vault.stop()


@pytest.fixture
def durable_postgres(leak_guard: LeakGuard) -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster with fsync on: a crash test must measure real durability.
    Its database and log are kept for the session's leak scan."""
    cluster = PostgresCluster.create(durable=True)
    cluster.start()
    try:
        yield cluster
        try:
            wait_until_reachable(cluster.dsn(), timeout_s=2)
        except PostgresUnavailable:
            cluster.start()  # a fault test may leave it stopped
        dump_database(cluster.dsn(), "postgres", cluster.bindir, leak_guard.dumps)
    finally:
        cluster.keep_log(leak_guard.dumps)
        cluster.destroy()


_REPORT = pytest.StashKey[list[str]]()


@pytest.fixture
def reliability_report(request: pytest.FixtureRequest) -> list[str]:
    """Lines appended here are printed in the test run's summary (CI shows them)."""
    return request.config.stash.setdefault(_REPORT, [])


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    lines = config.stash.get(_REPORT, [])
    if lines:
        terminalreporter.section("reliability")
        for line in lines:
            terminalreporter.write_line(line)
