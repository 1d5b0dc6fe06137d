"""A busy CloudHSM answers ``CKR_FUNCTION_FAILED`` once the SDK's own retries are spent
(troubleshoot-hsm-throttling.html; pkcs11-library-configs-retry.html: up to 3, with
backoff). The pool took it for a lost connection: it retried once on a fresh session,
then re-initialised the library (``C_Finalize``, ``C_Initialize``, every session and the
login again, with every other call waiting), adding load where the HSM asked for less.
Session 35: the call is still retried once and then answers 503 `hsm_unavailable`, but
the library is not re-initialised for it; the next call goes on as before.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.cloudhsm_shim import CloudHSMShim, ShimFaults
from tests.support.probes import run_probe
from tests.support.softhsm import SoftHSMToken


def test_a_throttled_call_answers_unavailable_without_re_initialising_the_library(
    tmp_path: Path, softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim
) -> None:
    faults = ShimFaults(tmp_path / "faults")
    faults.clear()
    try:
        result = run_probe(
            "tests.support.throttle_probe",
            str(cloudhsm_shim.library),
            str(softhsm_token.conf),
            softhsm_token.label + "-shim",
            softhsm_token.user_pin,
            str(faults.path),
            env=cloudhsm_shim.env(fault_file=faults.path),
            timeout=600,
        )
    finally:
        faults.clear()
    assert str(result["throttled"]).startswith("HSMUnavailable: "), result
    assert "FunctionFailed" in str(result["throttled"]), result
    assert result["reinitialised"] == 0, result
    assert result["keys_after"] == result["keys_before"], result
