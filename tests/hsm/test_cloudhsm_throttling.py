"""A busy CloudHSM answers ``CKR_FUNCTION_FAILED`` once the SDK's own retries are spent
(troubleshoot-hsm-throttling.html; pkcs11-library-configs-retry.html: up to 3, with
backoff). The pool took it for a lost connection: it retried once on a fresh session,
then re-initialised the library (``C_Finalize``, ``C_Initialize``, every session and the
login again, with every other call waiting), adding load where the HSM asked for less.
Session 35: the call is still retried once and then answers 503 `hsm_unavailable`, but
the library is not re-initialised for it; the next call goes on as before.

Session 36: the same page says a busy HSM's PKCS#11 answer may also be
``CKR_OPERATION_ACTIVE`` ("In PKCS11, busy errors map to CKR_OPERATION_ACTIVE errors").
The shim did not model it, and the pool took it for a refused operation
(`HSMOperationFailed`: `503 hsm_operation_failed` at once, the session kept with
whatever the SDK left active on it, and a held security code's decryption refused so
taken for one altered, `integrity_error`). Now it is handled as ``CKR_FUNCTION_FAILED``
is: the session dropped, the call retried once on a fresh one, then `HSMUnavailable`,
the library never re-initialised.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cloudhsm_shim import CloudHSMShim, ShimFaults
from tests.support.probes import run_probe
from tests.support.softhsm import SoftHSMToken


@pytest.mark.parametrize("code", ["FUNCTION_FAILED", "OPERATION_ACTIVE"])
def test_a_throttled_call_answers_unavailable_without_re_initialising_the_library(
    tmp_path: Path, softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim, code: str
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
            code,
            env=cloudhsm_shim.env(fault_file=faults.path),
            timeout=600,
        )
    finally:
        faults.clear()
    assert str(result["throttled"]).startswith("HSMUnavailable: "), result
    name = {"FUNCTION_FAILED": "FunctionFailed", "OPERATION_ACTIVE": "OperationActive"}[code]
    assert name in str(result["throttled"]), result
    assert result["reinitialised"] == 0, result
    assert result["keys_after"] == result["keys_before"], result
    # Refused once: answered by the retry on a fresh session (the shim injected it).
    assert result["once"] == f"{result['keys_before']} keys", result
    assert result["injected"] == 1, result
