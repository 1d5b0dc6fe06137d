"""Run by tests/hsm/test_readiness_hang.py in a process of its own, so that the CloudHSM
shim reads its fault file when it loads: readiness checks (`HSMProvider.health_check`,
what `/readyz` asks) while the library's ``C_Initialize`` hangs. Prints one JSON object.

    python -m tests.support.readiness_probe LIBRARY CONF LABEL PIN FAULT_FILE SCENARIO

SCENARIO ``start``: the library is not loaded and nothing else is loading it (the test
made the fault file hang ``C_Initialize`` before this process loaded the shim).
SCENARIO ``reinit``: the node was ready; then every ``C_GenerateRandom`` (the check's own
call) fails with a lost connection, so the check's call fails twice, which
re-initialises the library, and ``C_Initialize`` hangs.

Each check runs in a thread joined with a bound, so that a check that hangs is reported
("hung") rather than hanging the probe: the bound fails only on a hang.
COFRE_HSM__INIT_TIMEOUT_SECONDS is set far above it: a check that waits for the load it
started (as before session 34) is a check that hangs, to a probe with a timeout of a few
seconds (deploy/k8s: 3 s).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hsm._readiness
from hsm.provider import HSMProvider
from tests.support.cloudhsm_shim import ShimFaults
from tests.support.probes import check, probe_provider, until_ready

HANG_BOUND = 60.0
READY_BOUND = 120.0
INIT_TIMEOUT = 600


def main(argv: list[str]) -> None:
    library, conf, label, pin, fault_file, scenario = argv
    # The check's own call never hangs here (the load and the re-initialisation go to a
    # background thread): its bound (session 35) is raised so it can only fail on a hang,
    # never on a slow machine.
    hsm._readiness.READY_CALL_WAIT_SECONDS = HANG_BOUND / 2  # type: ignore[misc]
    provider = probe_provider(library, conf, label, pin, init_timeout_seconds=INIT_TIMEOUT)
    faults = ShimFaults(Path(fault_file))
    steps: list[str] = []
    if scenario == "reinit":
        steps.append(_until_ready(provider))
        faults.hang_initialize()
        faults.inject("DEVICE_ERROR", ["C_GenerateRandom"])
    # The check that meets the hang, then one while it lasts.
    steps += [_check(provider), _check(provider)]
    faults.clear()
    steps.append(_until_ready(provider))
    sys.stdout.write(json.dumps({"steps": steps}) + "\n")


def _check(provider: HSMProvider) -> str:
    return check(provider, HANG_BOUND)


def _until_ready(provider: HSMProvider) -> str:
    return until_ready(provider, HANG_BOUND, READY_BOUND)


if __name__ == "__main__":
    main(sys.argv[1:7])
