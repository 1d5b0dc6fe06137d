"""Session 38: what re-initialising the library after a throttled attribute read does to
the other threads' calls (AWS known issue ki-pkcs11-15: a throttled
``C_GetAttributeValue`` answers ``CKR_DEVICE_ERROR``; the pool drops the session,
retries once on a fresh one, then re-initialises the library)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cloudhsm_shim import CloudHSMShim, ShimFaults
from tests.support.probes import run_probe
from tests.support.softhsm import SoftHSMToken


def _probe(mode: str, tmp_path: Path, token: SoftHSMToken, shim: CloudHSMShim) -> dict[str, object]:
    faults = ShimFaults(tmp_path / "faults")
    faults.clear()
    try:
        return run_probe(
            "tests.support.reinit_probe",
            str(shim.library),
            str(token.conf),
            token.label + "-shim",
            token.user_pin,
            str(faults.path),
            mode,
            env=shim.env(fault_file=faults.path),
            timeout=600,
        )
    finally:
        faults.clear()


def test_a_re_initialisation_waits_for_a_call_inside_the_token(
    tmp_path: Path, softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim
) -> None:
    """Never under a call in flight: ``C_Finalize`` would close its session mid-operation
    (its caller would get a lost session for a call the HSM may have done)."""
    result = _probe("held", tmp_path, softhsm_token, cloudhsm_shim)
    assert result["inside"] == "ok 32", result
    assert str(result["failing"]).startswith("HSMUnavailable: "), result
    assert "DeviceError" in str(result["failing"]), result
    assert result["reinitialised"] == 1, result
    assert result["keys_after"] is True, result


@pytest.mark.parametrize("threads", [4])
def test_a_burst_of_throttled_reads_re_initialises_the_library_once(
    tmp_path: Path, softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim, threads: int
) -> None:
    """Calls that fail together need one new library, not one each: every
    re-initialisation closes the pool, ``C_Finalize``, ``C_Initialize`` and logs in again,
    while the throttled cluster asked for less."""
    result = _probe("burst", tmp_path, softhsm_token, cloudhsm_shim)
    answers = result["answers"]
    assert isinstance(answers, list), result
    assert len(answers) == threads, result
    assert all(str(a).startswith("HSMUnavailable: ") for a in answers), result
    assert result["reinitialised"] == 1, result
    assert result["keys_after"] is True, result
