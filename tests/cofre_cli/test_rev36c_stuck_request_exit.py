"""A worker whose request threads wait on a database that does not answer still exits
after its stop (review 36c).

The stop after the drain abandons its own steps (daemon threads, `cofre_cli.stopping`),
but a request's vault call runs in `api.routes._offload`'s executor, whose threads
`concurrent.futures` joins when the interpreter ends: a call stuck in a statement on a
paused PostgreSQL (no client-side bound on an open connection) held the worker after
its keys were wiped, until the kubelet's SIGKILL. The wait below is a bound that fails
only on a hang."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.cofre_cli.test_stop36_stop_deadline import (
    _signal_cluster,
    own_postgres,
)
from tests.support.pans import card_number
from tests.support.postgres import PostgresCluster, free_port
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, log_events, make_vault

__all__ = ["own_postgres"]  # the fixture, used by name

# Far past the stop's own bounds (drain 1 s, then 5 + 3 + 1 + 5 s): fails only on a hang.
EXIT_BOUND = 90.0


def _tokenize(vault: VaultProcess, serial: int) -> None:
    with contextlib.suppress(httpx.HTTPError), vault.client(timeout=EXIT_BOUND * 2) as client:
        client.post("/v1/tokenize", json={"pan": card_number("4", serial), "format": "uuid"})


def test_a_request_stuck_on_a_paused_database_does_not_hold_the_exit(
    tmp_path: Path, softhsm_token: SoftHSMToken, own_postgres: PostgresCluster
) -> None:
    vault = make_vault(tmp_path / "v", softhsm_token, own_postgres.sqlalchemy_url())
    vault.env.update(
        {
            "COFRE_SERVER__WORKERS": "2",
            "COFRE_SERVER__HEALTH_PORT": str(free_port()),
            "COFRE_SERVER__DRAIN_TIMEOUT_SECONDS": "1",
            "COFRE_LOG_LEVEL": "INFO",
        }
    )
    vault.start()
    assert vault.process is not None
    _tokenize(vault, 1)  # connections open in the pool before the pause
    _signal_cluster(own_postgres, signal.SIGSTOP)
    callers = [
        threading.Thread(target=_tokenize, args=(vault, n), daemon=True) for n in (2, 3, 4, 5)
    ]
    for caller in callers:
        caller.start()
    # They wait on the paused database (a bound, not a measure): 2 s for them all, not
    # 2 s each (they run at once; joined one by one, the four stuck calls took 8 s).
    waited = time.monotonic() + 2
    for caller in callers:
        caller.join(max(0.0, waited - time.monotonic()))
    vault.process.send_signal(signal.SIGTERM)
    try:
        status = vault.process.wait(timeout=EXIT_BOUND)
    except subprocess.TimeoutExpired:
        stopped = [e for e in log_events(vault.log) if e.get("event") == "vault stopped"]
        vault.kill()
        pytest.fail(f"cofre serve did not exit after its stop; stopped: {stopped}")
    stopped = [e for e in log_events(vault.log) if e.get("event") == "vault stopped"]
    assert len(stopped) == 2, stopped
    assert status == 0
