"""A readiness check that itself loads the PKCS#11 library: when nothing else was
loading it and the library was not loaded (at start, or after a failed
re-initialisation, with only the kubelet's probes arriving on an unready node), the
check called ``C_Initialize`` in its own thread; a CloudHSM client whose cluster does
not answer hung there, that `/readyz` never answered, and every later probe waited
behind it. Now the check starts the load in the background and waits for it at most
COFRE_HSM__INIT_TIMEOUT_SECONDS, then answers `HSMUnavailable`; later checks answer at
once while ``C_Initialize`` has not returned, and the node becomes ready by itself once
it does (session 33; tests/support/cloudhsm_shim.c's ``.hang-initialize``)."""

from __future__ import annotations

from pathlib import Path

from tests.support.cloudhsm_shim import CloudHSMShim, ShimFaults
from tests.support.probes import run_probe
from tests.support.softhsm import SoftHSMToken


def test_a_readiness_check_never_waits_on_a_hanging_c_initialize(
    tmp_path: Path, softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim
) -> None:
    faults = ShimFaults(tmp_path / "faults")
    faults.clear()
    faults.hang_initialize()
    try:
        result = run_probe(
            "tests.support.readiness_probe",
            str(cloudhsm_shim.library),
            str(softhsm_token.conf),
            softhsm_token.label + "-shim",
            softhsm_token.user_pin,
            str(faults.path),
            env=cloudhsm_shim.env(fault_file=faults.path),
        )
    finally:
        faults.answer_initialize()
    steps = result["steps"]
    assert isinstance(steps, list), result
    first, second, last = (str(step) for step in steps)
    assert first.startswith("HSMUnavailable: PKCS#11 library not answering"), first
    assert second.startswith("HSMUnavailable: PKCS#11 library not answering"), second
    assert last == "ok", result
