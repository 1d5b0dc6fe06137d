"""Review 29b: the mTLS `/readyz`'s metered, shared runs of the readiness checks
(`api.health.ReadyProbes`, review 29), attacked with one stolen client certificate at a
time while a run is slow (a database past its pool and connect timeouts, a networked
HSM that does not answer): the cases where the shared answer is old.

A test named ``test_finding_...`` FAILED on the reviewed main (its docstring: severity,
what the attacker gained, the fix)."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from api.health import PROBE_BURST, READY_CACHE_SECONDS
from hsm.errors import HSMUnavailable
from tests.api.conftest import VaultServer
from tests.api.test_crl import _connect
from tests.api.test_rev29_health import _get

# Bounded waits: they end a test that hangs, never decide one that passes.
HANG = 60.0


@dataclass
class SlowHsm:
    """The vault's HSM health check, made to wait in it until `release` (then fail,
    once `down`), with a clock held by the test for readiness."""

    now: list[float]
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    hung: bool = False
    down: bool = False


@pytest.fixture
def slow_hsm(vault_server: VaultServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowHsm]:
    provider = vault_server.runtime.provider
    real = provider.health_check
    slow = SlowHsm(now=[1000.0])

    def check() -> None:
        if slow.hung:
            slow.entered.set()
            assert slow.release.wait(HANG)
        if slow.down:
            raise HSMUnavailable("the token does not answer")
        real()

    monkeypatch.setattr(provider, "health_check", check)
    monkeypatch.setattr(vault_server.runtime.app.state.ready_probes, "clock", lambda: slow.now[0])
    yield slow
    slow.release.set()


def _probe(vault: VaultServer, name: str) -> tuple[int, dict[str, Any]]:
    with _connect(vault, name) as sock:
        answer = _get(sock, "/readyz")
        return answer.status, json.loads(answer.body)  # type: ignore[attr-defined]


def test_finding_a_spent_allowance_does_not_answer_an_old_ready_while_a_run_is_slow(
    vault_server: VaultServer, slow_hsm: SlowHsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Low (fixed). A probe past its certificate's allowance was answered the newest
    run's answer, however old, without waiting for the run under way: while a run was
    slow (a database past its 10 s pool timeout, an HSM that does not answer), every
    such probe got the "ready" of the last run that ended, minutes old if it was, until
    the slow run ended. A holder of the load balancer's certificate (or a load balancer
    whose nodes share one and probe faster than once a second together) kept that
    certificate's allowance spent, and the probes on its other connections saw a node
    whose HSM was down as ready. Now a probe answered from another run gets it only
    while that run began at most `READY_CACHE_SECONDS` ago; otherwise it waits for the
    run under way (without holding a thread), or runs the checks if none is."""
    probes = vault_server.runtime.app.state.ready_probes
    for _ in range(PROBE_BURST):  # the certificate's allowance, spent: all ready
        assert _probe(vault_server, "ledger")[0] == 200
    slow_hsm.hung = True
    slow_hsm.now[0] += READY_CACHE_SECONDS * 1.5  # one unit back, the answer 1.5 s old
    with ThreadPoolExecutor(2) as pool:
        own = pool.submit(_probe, vault_server, "ledger")  # runs the checks: stuck
        assert slow_hsm.entered.wait(HANG)
        real_spend = probes._spend

        def spend_then_fail(key: str) -> bool:
            # The HSM goes down and its stuck call returns, after this probe was
            # metered and before it is answered.
            spent: bool = real_spend(key)
            slow_hsm.down = True
            slow_hsm.release.set()
            return spent

        monkeypatch.setattr(probes, "_spend", spend_then_fail)
        status, body = pool.submit(_probe, vault_server, "ledger").result(HANG)
        assert (status, body.get("code")) == (503, "hsm_unavailable"), body
        assert own.result(HANG)[0] == 503


def test_finding_probes_waiting_for_a_slow_run_hold_no_threads(
    vault_server: VaultServer, slow_hsm: SlowHsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Low (fixed). `/readyz` ran in the worker's thread pool (anyio's 40 threads, which
    every blocking call of the API runs in), and a probe with a unit of its allowance
    waited for the run under way there, holding its thread: one certificate's burst
    held 10 threads at once for as long as a run was slow, and one more each second
    after. Now the route waits without a thread; only the run itself holds one."""
    probes = vault_server.runtime.app.state.ready_probes
    arrived = threading.Semaphore(0)
    real_spend = probes._spend

    def counted(key: str) -> bool:
        spent: bool = real_spend(key)
        arrived.release()
        return spent

    monkeypatch.setattr(probes, "_spend", counted)
    slow_hsm.hung = True
    waiting = PROBE_BURST
    with ThreadPoolExecutor(waiting) as pool:
        answers = [pool.submit(_probe, vault_server, "store") for _ in range(waiting)]
        for _ in range(waiting):
            assert arrived.acquire(timeout=HANG)
        assert slow_hsm.entered.wait(HANG)
        # Threads stopped in `ReadyProbes.answer` (metered, then waiting for the run).
        # Checked after each probe was metered: one still on its way to the wait is in
        # `answer` too, so the figure does not depend on how far each has got.
        holding = [
            frame
            for frame in sys._current_frames().values()
            if _in_answer(frame) and frame is not sys._getframe()
        ]
        slow_hsm.release.set()
        assert [a.result(HANG)[0] for a in answers] == [200] * waiting
    assert holding == [], f"{len(holding)} threads held by waiting probes"


def _in_answer(frame: Any) -> bool:
    while frame is not None:
        code = frame.f_code
        if code.co_name == "answer" and code.co_filename.endswith("api/health.py"):
            return True
        frame = frame.f_back
    return False
