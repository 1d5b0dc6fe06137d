"""Run by tests/hsm/test_cloudhsm_throttling.py in a process of its own, so that the
CloudHSM shim reads its fault file when it loads: a call that a busy (throttled) HSM
refuses twice with CODE, ``FUNCTION_FAILED`` or ``OPERATION_ACTIVE``
(troubleshoot-hsm-throttling.html names both), then a call it refuses once. Prints one
JSON object: what the first call raised, how many times the library was re-initialised,
and what the second call answered.

    python -m tests.support.throttle_probe LIBRARY CONF LABEL PIN FAULT_FILE CODE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hsm.errors import HSMError
from tests.support.cloudhsm_shim import ShimFaults, initializations
from tests.support.probes import probe_provider


def main(argv: list[str]) -> None:
    library, conf, label, pin, fault_file, code = argv
    provider = probe_provider(library, conf, label, pin)
    faults = ShimFaults(Path(fault_file))
    result: dict[str, object] = {"keys_before": len(provider.list_keys())}
    loads = initializations(Path(library))
    # Both tries of one listing: the first and its retry on a fresh session.
    faults.inject(code, ["C_FindObjectsInit"], count=2)
    try:
        provider.list_keys()
        result["throttled"] = "ok"
    except HSMError as exc:
        result["throttled"] = f"{type(exc).__name__}: {exc}"
    result["reinitialised"] = initializations(Path(library)) - loads
    faults.clear()
    result["keys_after"] = len(provider.list_keys())
    # Refused once: the retry on a fresh session answers.
    faults.inject(code, ["C_FindObjectsInit"], count=1)
    try:
        result["once"] = f"{len(provider.list_keys())} keys"
    except HSMError as exc:
        result["once"] = f"{type(exc).__name__}: {exc}"
    result["injected"] = faults.report().injected
    faults.clear()
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:7])
