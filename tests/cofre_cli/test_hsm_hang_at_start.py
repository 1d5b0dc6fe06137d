"""A PKCS#11 library whose ``C_Initialize`` hangs at start (a CloudHSM client whose
cluster does not answer): `cofre serve`'s software-token check loaded the library in
the supervisor and waited there for good, before any listener, so the pod never
listened and its liveness probe failed with no log line saying why. Now the check is
bounded: it warns, naming the library, judges it by its file name as it does a library
that does not initialise, and the node listens, unready, until the HSM answers
(tests/support/cloudhsm_shim.c: the ``.hang-initialize`` file of the fault knob)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from cofre.settings import Settings
from cofre_cli._production import _software_token
from tests.support.cloudhsm_shim import CloudHSMShim, ShimFaults
from tests.support.postgres import free_port
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import make_vault

# Bounds on waits that end as soon as the awaited thing happens: they fail only on a hang.
LISTENING_BOUND = 180.0
READY_BOUND = 180.0
ANSWER_BOUND = 60.0


def _answer(health: str, path: str, timeout: float = 10) -> httpx.Response | None:
    """`path` on the health listener (the kubelet's probes), or None while nothing
    listens there or the answer does not come."""
    try:
        return httpx.get(f"{health}{path}", timeout=timeout)
    except httpx.TransportError:
        return None


def test_a_hanging_c_initialize_at_start_still_listens_unready_and_says_why(
    tmp_path: Path, softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim, pg_database: str
) -> None:
    """On PostgreSQL, as in production (on SQLite the sequencer waits for the HSM while
    holding the database's one writer lock, so every write waits too: docs/cloudhsm.md)."""
    faults = ShimFaults(tmp_path / "faults")
    faults.clear()
    vault = make_vault(tmp_path / "v", softhsm_token, pg_database)
    vault.env.update(cloudhsm_shim.env(fault_file=faults.path))
    vault.env["COFRE_HSM__LIBRARY"] = str(cloudhsm_shim.library)
    health_port = free_port()
    vault.env["COFRE_SERVER__HEALTH_PORT"] = str(health_port)
    # The start-up bound (15 s by default), shorter here: both waits name it.
    vault.env["COFRE_HSM__INIT_TIMEOUT_SECONDS"] = "3"
    health = f"http://127.0.0.1:{health_port}"
    migrated = vault.cofre("db", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    faults.hang_initialize()
    try:
        vault.spawn()  # not `start`: it would wait for a readiness that does not come
        assert vault.process is not None
        deadline = time.monotonic() + LISTENING_BOUND
        while (live := _answer(health, "/livez")) is None:
            assert vault.process.poll() is None, vault.log.read_text()[-3000:]
            assert time.monotonic() < deadline, (
                "cofre serve never listened while C_Initialize hung:\n"
                + vault.log.read_text()[-3000:]
            )
            time.sleep(0.2)
        assert live.status_code == 200
        # Answered, unready, while C_Initialize still hangs: the readiness check used
        # to wait on the library's lock that the hanging start-up thread holds, so the
        # probe got no answer at all and timed out (session 33).
        ready = _answer(health, "/readyz", timeout=ANSWER_BOUND)
        assert ready is not None, "the health listener's /readyz did not answer"
        assert ready.status_code == 503, ready.text
        assert ready.json() == {"status": "unready", "code": "hsm_unavailable"}
        with vault.client(timeout=ANSWER_BOUND) as client:
            problem = client.get("/readyz")  # the mTLS listener's, for load balancers
        assert problem.status_code == 503, problem.text
        assert problem.headers["content-type"].startswith("application/problem+json")
        assert problem.json()["code"] == "hsm_unavailable", problem.text
        events = [
            json.loads(line)
            for line in vault.log.read_text(errors="replace").splitlines()
            if line.startswith("{")
        ]
        warnings = [e for e in events if e.get("event", "").startswith("PKCS#11 library not")]
        assert warnings, "no log line says why the HSM was not identified"
        assert warnings[0]["library"] == str(cloudhsm_shim.library)
        assert "C_Initialize" in warnings[0]["reason"], warnings[0]
        assert all(" 3 s" in w["reason"] for w in warnings), warnings
        # The HSM answers: the node becomes ready by itself, without a restart.
        faults.answer_initialize()
        deadline = time.monotonic() + READY_BOUND
        while (ready := _answer(health, "/readyz")) is None or ready.status_code != 200:
            assert time.monotonic() < deadline, "the node never became ready"
            time.sleep(0.2)
    finally:
        faults.answer_initialize()
        vault.stop()


def test_the_production_check_judges_a_hanging_library_by_its_name_and_says_so(
    tmp_path: Path,
    softhsm_token: SoftHSMToken,
    cloudhsm_shim: CloudHSMShim,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the software-token allowance (production), the supervisor's check gives
    up at its bound, warns naming the library and why, and judges it by its file name
    (the shim's is not SoftHSM2's), as for a library that does not initialise. The
    question is asked in a child process, so a hang never reaches this one: run in a
    thread here only so that the test fails, rather than hangs, without the bound."""
    faults = ShimFaults(tmp_path / "faults")
    faults.hang_initialize()
    for name, value in cloudhsm_shim.env(fault_file=faults.path).items():
        monkeypatch.setenv(name, value)  # read by the child that loads the shim
    settings = Settings.model_validate(
        {
            "hsm": {
                "library": cloudhsm_shim.library,
                "token_label": softhsm_token.label,
                "softhsm_conf": softhsm_token.conf,
                "init_timeout_seconds": 2,
            }
        }
    )
    judged: list[str | None] = []
    with capture_logs() as logs:
        checking = threading.Thread(
            target=lambda: judged.append(_software_token(settings, allowed_anyway=False)),
            daemon=True,
        )
        checking.start()
        checking.join(timeout=LISTENING_BOUND)
    faults.answer_initialize()
    assert not checking.is_alive(), "the start-up check waited on C_Initialize unbounded"
    assert judged == [None]
    [warning] = [e for e in logs if e["event"].startswith("PKCS#11 library not")]
    assert warning["library"] == str(cloudhsm_shim.library)
    assert "did not answer C_Initialize" in warning["reason"], warning
    assert "within 2 s" in warning["reason"], warning  # COFRE_HSM__INIT_TIMEOUT_SECONDS
