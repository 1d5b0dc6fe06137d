"""On-call's view of witnessed checkpoints: when the vault cannot get a head cosigned (a
witness that is down, or one that refuses the log as a fork), the failures are counted
by witness and reason, the lag of the quorum's newest cosigned checkpoint behind the
newest head is a gauge, readiness says so without failing, and a refusal is an audit
entry. A real `cofre witness serve` process, the vault served in-process with its
metrics in an in-memory reader (as the other metric tests read them)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from audit.heads import log_origin, log_verifier_key
from audit.log import AuditEvent, AuditLog, Outcome
from audit.note import VerifierKey
from audit.publisher import REFUSED, CheckpointPublisher, PinnedWitness
from audit.schema import audit_entries
from audit.sequencer import Sequencer
from cofre.settings import AuditSettings, WitnessSettings
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.witness_process import WitnessProcess
from vault.signing import HSMTreeHeadSigner
from vault.storage.database import create_database_engine, migrate
from witness.client import submit_checkpoint

FAILURES = "cofre.audit.witness.publish_failures"
LAG = "cofre.audit.witness.lag_entries"


def _points(vault: VaultServer, name: str) -> dict[tuple[tuple[str, Any], ...], float]:
    data = vault.metrics.get_metrics_data()
    out = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:  # type: ignore[union-attr]
                        out[tuple(sorted(point.attributes.items()))] = point.value
    return out


def _value(vault: VaultServer, name: str, **labels: str) -> float | None:
    return _points(vault, name).get(tuple(sorted(labels.items())))


def _until(what: Callable[[], bool], message: str) -> None:
    deadline = time.monotonic() + 60
    while not what():
        assert time.monotonic() < deadline, message
        time.sleep(0.2)


def _witnessed_vault(tmp: Path, hsm_provider: HSMProvider, witness: WitnessProcess) -> Any:
    audit = AuditSettings(
        sign_every_entries=50,
        sign_every_seconds=0.5,
        witnesses=(WitnessSettings(url=witness.url, vkey=witness.vkey),),
        publish_interval_seconds=0.2,
    )
    return running_vault(tmp / "vault", hsm_provider, audit=audit)


def _tokenize(vault: VaultServer, count: int = 1) -> None:
    with vault.client("payments") as c:
        for _ in range(count):
            answer = c.post("/v1/tokenize", json={"pan": "4111111111111111", "format": "uuid"})
            assert answer.is_success, answer.text


def _readiness(vault: VaultServer) -> str:
    with vault.client() as c:
        answer = c.get("/readyz")
    assert answer.status_code == 200, answer.text  # a witness's outage never fails it
    return str(answer.json()["checks"]["audit_witnesses"])


def _refusals(vault: VaultServer) -> list[dict[str, Any]]:
    with vault.runtime.engine.connect() as connection:
        payloads = connection.execute(select(audit_entries.c.payload)).scalars().all()
    return [json.loads(p)["details"] for p in payloads if json.loads(p)["action"] == REFUSED]


def _log_vkey(hsm_provider: HSMProvider) -> bytes:
    pem = HSMTreeHeadSigner(hsm_provider).public_key_pem()
    return log_verifier_key(log_origin("cofre"), pem).encode()


def test_a_stopped_witness_is_counted_and_the_quorum_lag_grows(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    witness = WitnessProcess(tmp_path / "witness", [_log_vkey(hsm_provider)])
    witness.start()
    name = witness.key.name
    try:
        with _witnessed_vault(tmp_path, hsm_provider, witness) as vault:
            _tokenize(vault)
            _until(lambda: _readiness(vault) == "ok", "the witness never cosigned the head")
            # The log keeps moving (readiness probes, heads): one collection at a time.
            _until(
                lambda: (
                    _points(vault, LAG) == {(("witness", "quorum"),): 0, (("witness", name),): 0}
                ),
                "the lag never came back to 0 with the witness up",
            )
            assert _value(vault, FAILURES, witness=name, reason="unreachable") == 0
            witness.stop()
            _tokenize(vault, 3)
            _until(
                lambda: (
                    (_value(vault, FAILURES, witness=name, reason="unreachable") or 0) >= 1
                    and (_value(vault, LAG, witness="quorum") or 0) > 0
                ),
                "no failure counted for the stopped witness",
            )
            lags = _points(vault, LAG)  # one witness: its lag is the quorum's
            assert lags[(("witness", name),)] == lags[(("witness", "quorum"),)] > 0
            assert (_value(vault, "cofre.audit.witness.lag_seconds", witness="quorum") or 0) >= 0
            assert _value(vault, FAILURES, witness=name, reason="refused") == 0
            ready = _readiness(vault)
            assert ready.startswith("witness quorum (1) not reached for the newest"), ready
            assert "did not answer" in ready
            assert not _refusals(vault)  # an outage is counted and logged, not audited
    finally:
        witness.stop()


def test_a_witness_that_refuses_the_log_as_a_fork_is_counted_and_audited(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    """Before this vault starts, the witness cosigned another history of the same log
    (same origin, same HSM key): 30 entries this vault's log does not have. It refuses
    every head the vault sends."""
    witness = WitnessProcess(tmp_path / "witness", [_log_vkey(hsm_provider)])
    witness.start()
    name = witness.key.name
    other = create_database_engine(f"sqlite:///{tmp_path / 'other-history.sqlite3'}")
    try:
        migrate(other)
        with other.begin() as connection:
            AuditLog().append_many(
                connection,
                [AuditEvent(action="tokenize", outcome=Outcome.SUCCESS, actor="elsewhere")] * 30,
            )
        signer = HSMTreeHeadSigner(hsm_provider)
        Sequencer(other, signer, sign_every_entries=10_000, sign_every_seconds=3600).drain()

        def submit(pinned: PinnedWitness, body: bytes) -> tuple[int, str, str]:
            answer = submit_checkpoint(pinned.url, body)
            return answer.status, answer.content_type, answer.text

        pinned = PinnedWitness(witness.url, VerifierKey.parse(witness.vkey))
        forked = CheckpointPublisher(other, [pinned], signer.public_key_pem, submit)
        assert forked.publish_once() == {name: "cosigned 30"}
        with _witnessed_vault(tmp_path, hsm_provider, witness) as vault:
            _tokenize(vault, 2)
            _until(
                lambda: (_value(vault, FAILURES, witness=name, reason="refused") or 0) >= 1,
                "no refusal counted",
            )
            _until(lambda: bool(_refusals(vault)), "the refusal was not audited")
            [refusal] = _refusals(vault)[:1]
            assert refusal["witness"] == name
            assert refusal["reason"] == "refused"
            assert "rolled back" in refusal["error"] or "forked" in refusal["error"]
            assert (_value(vault, LAG, witness="quorum") or 0) > 0
            assert _value(vault, FAILURES, witness=name, reason="unreachable") == 0
            assert "not reached" in _readiness(vault)
    finally:
        other.dispose()
        witness.stop()
