"""A readiness check on a pool whose every session is busy, and on a call that hangs.

Session 34's note (3.2): a check waited for a free session with no bound, so a node
whose sessions were all busy on slow calls answered `/readyz` late or never, and one whose
sessions were all held by calls its HSM connection black-holed never answered at all; and
the check's own call, on a hung connection, was bounded only by the client library's
timeouts. Session 35: a busy pool is evidence of a working HSM only while its calls
answer. The check waits for a session at most `hsm._readiness.READY_POOL_WAIT_SECONDS`; if
none frees but calls were answered meanwhile, the node is ready; if none answered, it is
not. Its own call runs in one background thread that it waits for at most
`READY_CALL_WAIT_SECONDS`; while that call has not returned, later checks answer unready
at once and start no other (the shim's ``HANG`` knob black-holes calls; no assertion here
depends on how fast anything runs).
"""

from __future__ import annotations

from pathlib import Path

from tests.support.cloudhsm_shim import CloudHSMShim, ShimFaults
from tests.support.probes import run_probe
from tests.support.softhsm import SoftHSMToken


def _probe(
    tmp_path: Path,
    softhsm_token: SoftHSMToken,
    shim: CloudHSMShim,
    scenario: str,
    latency_us: int = 0,
) -> dict[str, object]:
    faults = ShimFaults(tmp_path / "faults")
    faults.clear()
    try:
        return run_probe(
            "tests.support.saturation_probe",
            str(shim.library),
            str(softhsm_token.conf),
            softhsm_token.label + "-shim",
            softhsm_token.user_pin,
            str(faults.path),
            scenario,
            env=shim.env(fault_file=faults.path, latency_us=latency_us),
            timeout=900,
        )
    finally:
        faults.clear()


def test_a_pool_held_by_calls_that_never_answer_is_unready_and_the_check_returns(
    tmp_path: Path, softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim
) -> None:
    result = _probe(tmp_path, softhsm_token, cloudhsm_shim, "busy-hung")
    assert result["ready_before"] == "ok", result
    checks = result["checks"]
    assert isinstance(checks, list), result
    assert len(checks) == 3, result
    for answer in checks:
        assert str(answer).startswith("HSMUnavailable: every HSM session is busy"), result
        assert "none answered" in str(answer), result
    # The key registry's listing, which readiness runs next, is bounded the same way.
    assert str(result["listing"]).startswith("HSMUnavailable: every HSM session is busy"), result
    assert result["ready_after"] == "ok", result


def test_a_pool_busy_with_calls_that_answer_is_ready(
    tmp_path: Path, softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim
) -> None:
    result = _probe(tmp_path, softhsm_token, cloudhsm_shim, "busy-answering", latency_us=5000)
    assert result["checks"] == ["ok"] * 5, result
    assert str(result["listing_idle"]).startswith("ok: "), result
    assert result["listing"] == result["listing_idle"], result
    assert result["ready_after"] == "ok", result


def test_a_check_whose_call_hangs_answers_and_starts_no_second_call(
    tmp_path: Path, softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim
) -> None:
    result = _probe(tmp_path, softhsm_token, cloudhsm_shim, "call-hung")
    assert result["ready_before"] == "ok", result
    checks = result["checks"]
    assert isinstance(checks, list), result
    assert len(checks) == 3, result
    for answer in checks:
        assert str(answer).startswith(
            "HSMUnavailable: the token has not answered a readiness check's call"
        ), result
    # Every check answered, and one call is held however many came: no thread pile-up.
    assert result["check_threads"] == 1, result
    assert result["ready_after"] == "ok", result
