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

from pydantic import SecretStr

import hsm._readiness
from cofre.settings import HSMSettings
from hsm.errors import HSMError, HSMUnavailable
from hsm.provider import HSMProvider, provider_from_settings
from tests.support.cloudhsm_shim import ShimFaults

HANG_BOUND = 20.0
READY_BOUND = 120.0
CHECK_THREAD = "cofre-hsm-check"


def main(argv: list[str]) -> None:
    library, conf, label, pin, fault_file, scenario = argv
    provider = provider_from_settings(
        HSMSettings.model_validate(
            {
                "library": Path(library),
                "token_label": label,
                "pin": SecretStr(pin),
                "softhsm_conf": Path(conf),
                "session_pool_size": 2,
            }
        )
    )
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
    outcome: list[str] = []

    def run() -> None:
        try:
            provider.health_check()
            outcome.append("ok")
        except HSMUnavailable as exc:
            outcome.append(f"HSMUnavailable: {exc}")

    checking = threading.Thread(target=run, daemon=True)
    checking.start()
    checking.join(HANG_BOUND)
    return outcome[0] if outcome else "hung"


def _registry_listing(provider: HSMProvider) -> str:
    """The key registry's listing for readiness (`list_keys_for_check`; before session 35
    it was `list_keys`, unbounded), in a thread joined with the hang bound."""
    listing = getattr(provider, "list_keys_for_check", provider.list_keys)
    outcome: list[str] = []

    def run() -> None:
        try:
            outcome.append(f"ok: {len(listing())} keys")
        except HSMUnavailable as exc:
            outcome.append(f"HSMUnavailable: {exc}")

    listing_thread = threading.Thread(target=run, daemon=True)
    listing_thread.start()
    listing_thread.join(HANG_BOUND)
    return outcome[0] if outcome else "hung"


def _until_ready(provider: HSMProvider) -> str:
    """Checks until one passes (bounded), the last one's answer."""
    deadline = time.monotonic() + READY_BOUND
    while (last := _check(provider)) != "ok" and time.monotonic() < deadline:
        time.sleep(0.1)
    return last


if __name__ == "__main__":
    main(sys.argv[1:7])
