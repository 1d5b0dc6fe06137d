"""Run by tests/hsm/test_readiness_saturation.py in a process of its own, so that the
CloudHSM shim reads its fault file and latency when it loads: readiness checks
(`HSMProvider.health_check`, what `/readyz` asks) while every session of the pool is
busy, or while the check's own call black-holes. Prints one JSON object.

    python -m tests.support.saturation_probe LIBRARY CONF LABEL PIN FAULT_FILE SCENARIO

SCENARIO ``busy-hung``: both sessions of a pool of two are held by calls the shim
black-holes (``C_FindObjectsInit``, a key listing); nothing answers.
SCENARIO ``busy-answering``: a pool of two, four threads listing keys back to back with
the shim's latency (COFRE_SHIM_LATENCY_US): every session is busy, and calls answer.
SCENARIO ``call-hung``: the check's own call (``C_GenerateRandom``) black-holes.

Each check runs in a thread joined with a bound, so that a check that hangs is reported
("hung") rather than hanging the probe: the bound fails only on a hang. Where a check
must not depend on how fast this machine is (``busy-answering``), the provider's own
bounds are raised far above any call's time, so that they too can only fail on a hang.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import hsm._readiness
from hsm.errors import HSMError
from hsm.provider import HSMProvider
from tests.support.cloudhsm_shim import ShimFaults
from tests.support.probes import bounded, check, probe_provider, until_ready

HANG_BOUND = 20.0
READY_BOUND = 120.0
CHECK_THREAD = "cofre-hsm-check"


def main(argv: list[str]) -> None:
    library, conf, label, pin, fault_file, scenario = argv
    provider = probe_provider(library, conf, label, pin)
    faults = ShimFaults(Path(fault_file))
    result: dict[str, object] = {"ready_before": _until_ready(provider)}
    stop = threading.Event()
    workers: list[threading.Thread] = []
    try:
        if scenario == "busy-hung":
            # Nothing answers until cleared, so the pool wait's outcome is fixed; the
            # call's bound is raised so that it can only fail on a hang.
            hsm._readiness.READY_CALL_WAIT_SECONDS = READY_BOUND  # type: ignore[misc]
            faults.hang(["C_FindObjectsInit"])
            workers = _listing(provider, stop, threads=2)
            _wait(lambda: faults.report().injected >= 2)  # both sessions held
            result["checks"] = [_check(provider) for _ in range(3)]
            result["listing"] = _registry_listing(provider)
        elif scenario == "busy-answering":
            for name in ("READY_POOL_WAIT_SECONDS", "READY_CALL_WAIT_SECONDS"):
                setattr(hsm._readiness, name, READY_BOUND)
            # The node's readiness listed the keys while it was idle (a node is ready
            # before traffic arrives); a busy pool's check reuses that listing.
            result["listing_idle"] = _registry_listing(provider)
            workers = _listing(provider, stop, threads=4)
            result["checks"] = [_check(provider) for _ in range(5)]
            result["listing"] = _registry_listing(provider)
        elif scenario == "call-hung":
            faults.hang(["C_GenerateRandom"])
            result["checks"] = [_check(provider) for _ in range(3)]
        result["check_threads"] = sum(t.name == CHECK_THREAD for t in threading.enumerate())
    finally:
        stop.set()
        faults.clear()
    for worker in workers:
        worker.join(HANG_BOUND)
    result["ready_after"] = _until_ready(provider)
    sys.stdout.write(json.dumps(result) + "\n")


def _listing(
    provider: HSMProvider, stop: threading.Event, *, threads: int
) -> list[threading.Thread]:
    def work() -> None:
        while not stop.is_set():
            try:
                provider.list_keys()
            except HSMError:
                time.sleep(0.01)

    started = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for thread in started:
        thread.start()
    return started


def _wait(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + READY_BOUND
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("the shim never held the calls")
        time.sleep(0.02)


def _check(provider: HSMProvider) -> str:
    return check(provider, HANG_BOUND)


def _registry_listing(provider: HSMProvider) -> str:
    """The key registry's listing for readiness (`list_keys_for_check`; before session 35
    it was `list_keys`, unbounded), in a thread joined with the hang bound."""
    listing = getattr(provider, "list_keys_for_check", provider.list_keys)
    return bounded(lambda: f"ok: {len(listing())} keys", HANG_BOUND)


def _until_ready(provider: HSMProvider) -> str:
    return until_ready(provider, HANG_BOUND, READY_BOUND)


if __name__ == "__main__":
    main(sys.argv[1:7])
