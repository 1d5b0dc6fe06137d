"""Session 38 (hsm38b): a throttled attribute read is the HSM being busy, not a key
refused, through the CloudHSM-behaviour shim.

A busy CloudHSM answers ``C_GetAttributeValue`` with ``CKR_DEVICE_ERROR`` (AWS
ki-pkcs11-15). python-pkcs11 0.10.1's ``get_attributes`` overwrites the length query's
return code with the value query's, so a throttled read of a key found by label can come
back without ``CKA_SENSITIVE``, ``CKA_EXTRACTABLE`` or the check value, and no error.
Until hsm38b the lookup then refused the key as one that "can leave the token"
(``hsm_operation_failed``) or as not the registry's (``hsm_key_unregistered``): it
never used it (fail closed), but named a planted key where the HSM was only busy, and the
caller did not retry. Now an attribute the token must report that comes back missing is
`HSMUnavailable` (``hsm_unavailable``, retried once on a fresh session, then a 503 to
retry), and the key is still never used on that read."""

from __future__ import annotations

from pathlib import Path

from hsm.provider import HSMProvider
from tests.support.cloudhsm_shim import CloudHSMShim, ShimFaults
from tests.support.probes import run_probe
from tests.support.softhsm import SoftHSMToken


def test_a_throttled_attribute_read_is_unavailable_not_a_refused_key(
    tmp_path: Path,
    softhsm_token: SoftHSMToken,
    cloudhsm_shim: CloudHSMShim,
    shim_provider: HSMProvider,  # the shim's token, with Cofre's keys
) -> None:
    faults = ShimFaults(tmp_path / "faults")
    faults.clear()
    try:
        result = run_probe(
            "tests.support.attribute_throttle_probe",
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
    for name, value in result.items():
        answer = str(value)
        busy = answer.startswith("HSMUnavailable hsm_unavailable")
        if name.startswith("listing"):
            assert answer == "same" or busy, (name, answer)
        elif name.startswith(("lookup", "signing")):
            assert answer in ("ok 32", "ok True") or busy, (name, answer)
    assert result["after"] == "ok 32", result
    assert result["listing after"] == "same", result
