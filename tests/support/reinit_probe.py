"""Run by tests/hsm/test_cka38_reinit_under_load.py in a process of its own (the CloudHSM
shim reads its fault file when it loads): what a re-initialisation of the library does to
the other threads' calls. AWS's known issue ki-pkcs11-15: a throttled
``C_GetAttributeValue`` answers ``CKR_DEVICE_ERROR``, which the pool takes for a lost
connection: retried once on a fresh session, then the library re-initialised.

- ``held``: one thread's call hangs inside the token (``C_GenerateRandom``) while
  another's attribute reads fail twice with ``CKR_DEVICE_ERROR``; the hang is released
  once the re-initialisation waits. Prints what each call answered and the
  re-initialisations.
- ``burst``: THREADS calls at once, each of whose two tries meets ``CKR_DEVICE_ERROR``.
  Prints what they answered and how many times the library was re-initialised.

    python -m tests.support.reinit_probe LIBRARY CONF LABEL PIN FAULT_FILE MODE
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hsm.errors import HSMError
from hsm.provider import HSMProvider
from tests.support.cloudhsm_shim import Fault, ShimFaults, initializations
from tests.support.probes import probe_provider

THREADS = 4
# A bound on waits that end at once unless something hangs (never a measured duration).
_FAR = 120.0


def _answer(call: Any) -> str:
    try:
        return f"ok {len(call())}"
    except HSMError as exc:
        return f"{type(exc).__name__}: {exc}"


def _until(condition: Any) -> None:
    deadline = time.monotonic() + _FAR
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the probe's call did not reach the point it waits for")
        time.sleep(0.01)


def held(provider: HSMProvider, faults: ShimFaults) -> dict[str, object]:
    answers: dict[str, str] = {}
    faults.set(
        Fault("HANG", ("C_GenerateRandom",), 1),
        Fault("DEVICE_ERROR", ("C_FindObjectsInit",), 2),
    )
    inside = threading.Thread(
        target=lambda: answers.__setitem__(
            "inside", _answer(lambda: provider._run(lambda s: s.generate_random(256)))
        )
    )
    inside.start()
    _until(lambda: faults.report().injected >= 1)  # the call hangs in the token
    failing = threading.Thread(
        target=lambda: answers.__setitem__("failing", _answer(provider.list_keys))
    )
    failing.start()
    _until(lambda: provider._closed)  # its re-initialisation waits for the pool
    faults.clear()
    inside.join(_FAR)
    failing.join(_FAR)
    return answers


def burst(provider: HSMProvider, faults: ShimFaults) -> dict[str, object]:
    answers: list[str] = []
    start = threading.Barrier(THREADS)

    def call() -> None:
        start.wait(_FAR)
        answers.append(_answer(provider.list_keys))

    faults.inject("DEVICE_ERROR", ["C_FindObjectsInit"], count=2 * THREADS)
    threads = [threading.Thread(target=call) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(_FAR)
    injected = faults.report().injected
    faults.clear()
    return {"answers": sorted(answers), "injected": injected}


def main(argv: list[str]) -> None:
    library, conf, label, pin, fault_file, mode = argv
    provider = probe_provider(library, conf, label, pin, pool=THREADS)
    faults = ShimFaults(Path(fault_file))
    # A key of the probe's own: a listing reads its attributes (`C_GetAttributeValue`).
    key = f"reinit-probe-{secrets.token_hex(4)}"
    provider.generate_kek(key)
    try:
        keys = len(provider.list_keys())
        loads = initializations(Path(library))
        try:
            result = (held if mode == "held" else burst)(provider, faults)
        finally:
            faults.clear()  # never leave a call hanging behind an error of the probe
        result["reinitialised"] = initializations(Path(library)) - loads
        result["keys_after"] = len(provider.list_keys()) == keys
    finally:
        provider.destroy_key(key)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:7])
