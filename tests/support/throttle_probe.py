"""Run by tests/hsm/test_cloudhsm_throttling.py in a process of its own, so that the
CloudHSM shim reads its fault file when it loads: a call that a busy (throttled) HSM
refuses twice with ``CKR_FUNCTION_FAILED`` (troubleshoot-hsm-throttling.html). Prints one
JSON object: what the call raised, and how many times the library was re-initialised.

    python -m tests.support.throttle_probe LIBRARY CONF LABEL PIN FAULT_FILE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hsm.errors import HSMUnavailable
from tests.support.cloudhsm_shim import ShimFaults, initializations
from tests.support.probes import probe_provider


def main(argv: list[str]) -> None:
    library, conf, label, pin, fault_file = argv
    provider = probe_provider(library, conf, label, pin)
    faults = ShimFaults(Path(fault_file))
    result: dict[str, object] = {"keys_before": len(provider.list_keys())}
    loads = initializations(Path(library))
    # Both tries of one listing: the first and its retry on a fresh session.
    faults.inject("FUNCTION_FAILED", ["C_FindObjectsInit"], count=2)
    try:
        provider.list_keys()
        result["throttled"] = "ok"
    except HSMUnavailable as exc:
        result["throttled"] = f"HSMUnavailable: {exc}"
    result["reinitialised"] = initializations(Path(library)) - loads
    faults.clear()
    result["keys_after"] = len(provider.list_keys())
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:6])
