"""The HSM fails in the middle of operations, as a CloudHSM client sees when its network
blips or an HSM of the cluster is replaced: `cofre serve` on PostgreSQL, through the
CloudHSM-behaviour shim (our reading of AWS's SDK 5 documentation, not CloudHSM), under
concurrent tokenize and detokenize calls, while the shim's fault knob makes chosen
PKCS#11 calls fail (tests/support/cloudhsm_shim.c, section "faults").

For each fault: every answer is 200 or 503 problem+json with code ``hsm_unavailable``
(never a 500, never a hang: every call has a bounded client timeout), no token row
without its audit entry, readiness reports the HSM while the probe's calls fail, and
once the fault ends the vault serves again by itself: the sessions the HSM killed are
dropped and closed, not reused, and the pool logs in again."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.support.cloudhsm_shim import (
    CloudHSMShim,
    Fault,
    FaultReport,
    MalformedFault,
    ShimFaults,
)
from tests.support.pans import card_number
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault
from vault.storage.database import create_database_engine

POOL_SIZE = 4
# The calls a tokenize, a detokenize or the audit signer makes on a live session.
CRYPTO = (
    "C_SignInit",
    "C_Sign",
    "C_EncryptInit",
    "C_Encrypt",
    "C_DecryptInit",
    "C_Decrypt",
    "C_WrapKey",
    "C_UnwrapKey",
    "C_FindObjectsInit",
    "C_FindObjects",
    "C_FindObjectsFinal",
)
EVERYTHING = ("*",)
OPENING = ("C_Login",)
# Calls each load thread makes while a fault is on (a count, never a duration).
CALLS_UNDER_FAULT = 12
# Calls after the fault ends before the vault must serve again.
CALLS_TO_RECOVER = 3
SUCCESSES_IN_A_ROW = 10


def _pan(i: int) -> str:
    return card_number("5", i)


@dataclass
class Served:
    vault: VaultProcess
    faults: ShimFaults
    url: str
    tokens: list[str] = field(default_factory=list)
    next_pan: int = 0

    def tokenize(self, client: httpx.Client) -> httpx.Response:
        with self._lock:
            self.next_pan += 1
            pan = _pan(self.next_pan)
        return client.post("/v1/tokenize", json={"pan": pan, "format": "pan_bin6_last4"})

    def detokenize(self, client: httpx.Client, i: int) -> httpx.Response:
        return client.post("/v1/detokenize", json={"token": self.tokens[i % len(self.tokens)]})

    _lock: threading.Lock = field(default_factory=threading.Lock)


def _on_shim(
    tmp_path: Path, token: SoftHSMToken, shim: CloudHSMShim, database_url: str
) -> tuple[VaultProcess, ShimFaults]:
    faults = ShimFaults(tmp_path / "faults")
    faults.clear()
    vault = make_vault(tmp_path / "v", token, database_url)
    vault.env.update(shim.env(fault_file=faults.path))
    vault.env["COFRE_HSM__LIBRARY"] = str(shim.library)
    vault.env["COFRE_HSM__SESSION_POOL_SIZE"] = str(POOL_SIZE)
    return vault, faults


@pytest.fixture
def served(
    tmp_path: Path,
    softhsm_token: SoftHSMToken,
    cloudhsm_shim: CloudHSMShim,
    pg_database: str,
) -> Iterator[Served]:
    vault, faults = _on_shim(tmp_path, softhsm_token, cloudhsm_shim, pg_database)
    vault.start()
    state = Served(vault, faults, pg_database)
    with vault.client() as payments:
        for _ in range(4):
            response = state.tokenize(payments)
            assert response.status_code == 200, response.text
            state.tokens.append(response.json()["token"])
    yield state
    vault.stop()


@dataclass
class Outcomes:
    answers: list[tuple[str, int, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, response: httpx.Response) -> None:
        code = ""
        if response.status_code != 200:
            assert response.headers["content-type"].startswith("application/problem+json")
            code = response.json()["code"]
        with self.lock:
            self.answers.append((kind, response.status_code, code))

    def unexpected(self) -> list[tuple[str, int, str]]:
        return [a for a in self.answers if a[1] != 200 and (a[1], a[2]) != (503, "hsm_unavailable")]


def _load(served: Served, outcomes: Outcomes, calls: int) -> None:
    """Two tokenize and two detokenize threads, `calls` each; a call that hangs past
    the client's timeout raises and fails the test."""
    errors: list[BaseException] = []

    def run(kind: str) -> None:
        try:
            with served.vault.client(
                "payments" if kind == "tokenize" else "settlement", timeout=30
            ) as client:
                for i in range(calls):
                    if kind == "tokenize":
                        outcomes.record(kind, served.tokenize(client))
                    else:
                        outcomes.record(kind, served.detokenize(client, i))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in ("tokenize", "detokenize") * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [], errors


def _ready(served: Served) -> httpx.Response:
    with served.vault.client() as client:
        return client.get("/readyz")


def _recovered(served: Served) -> tuple[int, Outcomes]:
    """Calls until `SUCCESSES_IN_A_ROW` succeed in a row; returns the failures before."""
    outcomes = Outcomes()
    failures = 0
    in_a_row = 0
    with served.vault.client() as payments, served.vault.client("settlement") as settlement:
        for i in range(CALLS_TO_RECOVER + SUCCESSES_IN_A_ROW):
            tokenized = served.tokenize(payments)
            outcomes.record("tokenize", tokenized)
            detokenized = served.detokenize(settlement, i)
            outcomes.record("detokenize", detokenized)
            if tokenized.status_code == detokenized.status_code == 200:
                in_a_row += 1
                if in_a_row == SUCCESSES_IN_A_ROW:
                    return failures, outcomes
            else:
                failures += 1
                in_a_row = 0
    return failures, outcomes


def _readiness(served: Served, status: int) -> httpx.Response:
    """The first `/readyz` answer with `status`. Not always the first probe's: the mTLS
    `/readyz` is metered per certificate (`api.health.ReadyProbes`), and a probe may get
    the newest run's answer, up to a second old (from before or during the fault). A
    bounded wait that fails only on a hang; the last answer says what it still was."""
    ready = _ready(served)
    for _ in range(300):
        if ready.status_code == status:
            return ready
        time.sleep(0.1)
        ready = _ready(served)
    assert ready.status_code == status, ready.text
    return ready


def _unaudited(url: str) -> tuple[int, int]:
    """Token rows without a tokenize entry naming them, and tokenize entries naming no
    token row (a partial write either way)."""
    engine = create_database_engine(url)
    try:
        with engine.connect() as c:
            rows = c.execute(sa.text("SELECT id FROM tokens")).scalars().all()
            payloads = c.execute(
                sa.text("SELECT payload FROM audit_entries WHERE payload LIKE '%tokenize%'")
            ).scalars()
            named = {
                token_id
                for payload in payloads
                for token_id in [_token_id(payload)]
                if token_id is not None
            }
    finally:
        engine.dispose()
    return len(set(rows) - named), len(named - set(rows))


def _token_id(payload: str) -> str | None:
    entry = json.loads(payload)
    if entry.get("action") != "tokenize" or entry.get("outcome") != "success":
        return None
    token_id = entry.get("token_id")
    return token_id if isinstance(token_id, str) else None


FAULTS = {
    # A device error on the calls a live session makes, until switched off.
    "device-error": ("DEVICE_ERROR", CRYPTO, None),
    # The connection to the HSM dropped: each session the calls reach is dead for good.
    "session-handle-invalid": ("SESSION_HANDLE_INVALID", CRYPTO, None),
    # A short blip: the next few calls find their session closed.
    "session-closed-blip": ("SESSION_CLOSED", CRYPTO, POOL_SIZE * 2),
    # The HSM replaced: every session dies, the login ends, every call fails.
    "token-not-present": ("TOKEN_NOT_PRESENT", EVERYTHING, None),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_hsm_fault_under_load(served: Served, fault: str) -> None:
    code, functions, count = FAULTS[fault]
    served.faults.inject(code, functions, count)
    during = Outcomes()
    _load(served, during, CALLS_UNDER_FAULT)
    report = served.faults.report()
    assert report.injected > 0, f"the fault never hit: {report}"
    if count is None:
        assert any(status == 503 for _, status, _ in during.answers)
    if functions == EVERYTHING:
        assert _readiness(served, 503).json()["code"] == "hsm_unavailable"
    served.faults.clear()
    failures, after = _recovered(served)
    assert during.unexpected() == []
    assert after.unexpected() == []
    assert failures <= 1, (fault, failures, after.answers)
    _readiness(served, 200)
    assert _unaudited(served.url) == (0, 0)
    _assert_sessions_closed(served.faults.report())


def test_the_login_refused_while_the_pool_reopens(served: Served) -> None:
    """Every session dies (an HSM replaced), and the first reopenings fail to open or to
    log in: the vault answers 503 meanwhile, leaks no session, and logs in again."""
    # Readiness's probe meets the HSM's replacement: every session dies, the login ends;
    # from then on every login fails until the fault is switched off.
    served.faults.set(
        Fault("TOKEN_NOT_PRESENT", ("C_GenerateRandom",), 1), Fault("DEVICE_ERROR", OPENING)
    )
    assert _readiness(served, 503).json()["code"] == "hsm_unavailable"
    outcomes = Outcomes()
    _load(served, outcomes, CALLS_UNDER_FAULT)
    assert served.faults.report().injected > 0
    served.faults.clear()
    failures, after = _recovered(served)
    assert outcomes.unexpected() == []
    assert after.unexpected() == []
    assert failures <= 1, (failures, after.answers)
    assert _unaudited(served.url) == (0, 0)
    _assert_sessions_closed(served.faults.report())


def _assert_sessions_closed(report: FaultReport) -> None:
    # Every session the HSM killed was closed by the vault, and it holds no session
    # outside its pool: a session opened for a login that failed, or for one the token
    # already had, would count toward CloudHSM's 1,024 per application (limits.html).
    assert report.zombies == 0, report
    assert report.live <= POOL_SIZE, report


# The calls that make, wrap and unwrap data keys: a vault meets them when it starts with
# no data key in memory (and in key rotations), not under steady load.
DATA_KEYS = ("C_WrapKey", "C_UnwrapKey", "C_EncryptInit", "C_Encrypt", "C_DecryptInit", "C_Decrypt")


@pytest.mark.parametrize("code", ["DEVICE_ERROR", "SESSION_HANDLE_INVALID"])
def test_the_hsm_failing_from_the_start(
    tmp_path: Path,
    softhsm_token: SoftHSMToken,
    cloudhsm_shim: CloudHSMShim,
    pg_database: str,
    code: str,
) -> None:
    """The vault starts while its data keys cannot be made or unwrapped: alive, not
    ready, 503 for the calls that need them, and serving once the HSM answers."""
    vault, faults = _on_shim(tmp_path, softhsm_token, cloudhsm_shim, pg_database)
    faults.set(Fault(code, DATA_KEYS))
    vault.start(ready_path="/healthz")
    try:
        served = Served(vault, faults, pg_database)
        outcomes = Outcomes()
        with vault.client() as payments:
            for _ in range(3):
                outcomes.record("tokenize", served.tokenize(payments))
        assert faults.report().injected > 0
        assert {status for _, status, _ in outcomes.answers} == {503}
        assert outcomes.unexpected() == []
        _readiness(served, 503)
        faults.clear()
        with vault.client() as payments:
            first = served.tokenize(payments)
        assert first.status_code == 200, first.text
        served.tokens.append(first.json()["token"])
        failures, after = _recovered(served)
        assert after.unexpected() == []
        assert failures == 0, after.answers
        assert _unaudited(pg_database) == (0, 0)
        _assert_sessions_closed(faults.report())
    finally:
        vault.stop()


def test_the_knob_refuses_what_it_cannot_parse(served: Served) -> None:
    """A typo in the control file injects nothing and says so, rather than letting a
    fault test pass on a fault that never happened."""
    served.faults.path.write_text("DEVICE_EROR * C_Sign\n")
    with served.vault.client() as payments:
        assert served.tokenize(payments).status_code == 200
    with pytest.raises(MalformedFault):
        served.faults.report()
    with pytest.raises(ValueError, match="unknown PKCS#11 functions"):
        served.faults.inject("DEVICE_ERROR", ["C_Digest"])
    with pytest.raises(ValueError, match="unknown fault code"):
        served.faults.inject("PIN_INCORRECT", ["C_Login"])
