"""A readiness check never loads or re-initialises the PKCS#11 library in its own
thread, and never waits for either.

Session 33: when nothing else was loading it and the library was not loaded (at start,
or after a failed re-initialisation, with only the kubelet's probes arriving on an
unready node), the check called ``C_Initialize`` in its own thread; a CloudHSM client
whose cluster does not answer hung there, that `/readyz` never answered, and every later
probe waited behind it. The check then started the load in the background but waited
for it up to COFRE_HSM__INIT_TIMEOUT_SECONDS (15 s), past the probe's timeout (deploy/k8s:
3 s); and a check whose own HSM call failed twice still re-initialised the library in
its own thread (session 33's note, 3.2). Session 34: the check hands the load or the
re-initialisation to a background thread and answers `HSMUnavailable` at once; later
checks answer at once while it has not returned, and the node becomes ready by itself
once it does (tests/support/cloudhsm_shim.c's ``.hang-initialize``)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pydantic import SecretStr

from hsm.errors import HSMUnavailable
from hsm.provider import HSMProvider
from tests.support.cloudhsm_shim import CloudHSMShim, ShimFaults
from tests.support.probes import run_probe
from tests.support.softhsm import SoftHSMToken, settled_health_check

# A bound on a check that should answer at once: fails only on a hang.
HANG_BOUND = 60.0

_NOT_ANSWERING = "HSMUnavailable: PKCS#11 library not answering"


@pytest.mark.parametrize(
    ("scenario", "meets_the_hang"),
    [("start", _NOT_ANSWERING), ("reinit", "HSMUnavailable: token ")],
)
def test_a_readiness_check_never_waits_on_a_hanging_c_initialize(
    tmp_path: Path,
    softhsm_token: SoftHSMToken,
    cloudhsm_shim: CloudHSMShim,
    scenario: str,
    meets_the_hang: str,
) -> None:
    faults = ShimFaults(tmp_path / "faults")
    faults.clear()
    if scenario == "start":
        faults.hang_initialize()
    try:
        result = run_probe(
            "tests.support.readiness_probe",
            str(cloudhsm_shim.library),
            str(softhsm_token.conf),
            softhsm_token.label + "-shim",
            softhsm_token.user_pin,
            str(faults.path),
            scenario,
            env=cloudhsm_shim.env(fault_file=faults.path),
            timeout=600,
        )
    finally:
        faults.clear()
    assert isinstance(result["steps"], list), result
    steps = [str(step) for step in result["steps"]]
    if scenario == "reinit":
        assert steps.pop(0) == "ok", result  # ready before the fault
    first, second, last = steps
    assert first.startswith(meets_the_hang), first
    assert second.startswith(_NOT_ANSWERING), second
    assert last == "ok", result


def test_a_readiness_check_never_waits_behind_a_re_initialisation(
    softhsm_token: SoftHSMToken,
) -> None:
    """While another call re-initialises the library (it holds the session pool alone
    until ``C_Finalize`` and ``C_Initialize`` return, which a networked HSM's client may
    never do) a readiness check answers at once instead of waiting for the pool."""
    provider = HSMProvider(
        softhsm_token.library,
        softhsm_token.label,
        SecretStr(softhsm_token.user_pin),
        softhsm_token.conf,
    )
    settled_health_check(provider)
    outcome: list[str] = []

    def check() -> None:
        try:
            provider.health_check()
            outcome.append("ok")
        except HSMUnavailable as exc:
            outcome.append(str(exc))

    # White-box: hold the pool as `_reinitialize` does, for as long as the test likes.
    with provider._exclusive():
        checking = threading.Thread(target=check, daemon=True)
        checking.start()
        checking.join(HANG_BOUND)
    checking.join(HANG_BOUND)  # a check that waited for the pool ends once it is free
    assert outcome, "the check hung"
    assert outcome[0].startswith("PKCS#11 library not answering"), outcome
    settled_health_check(provider)  # and the next check, with the pool free, passes
    provider.close()
