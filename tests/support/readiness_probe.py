"""Run by tests/hsm/test_readiness_hang.py in a process of its own, so that the CloudHSM
shim reads its fault file when it loads: readiness checks (`HSMProvider.health_check`,
what `/readyz` asks) while the library is not loaded, nothing else is loading it, and
its ``C_Initialize`` hangs. Prints one JSON object.

    python -m tests.support.readiness_probe LIBRARY CONF LABEL PIN FAULT_FILE

Each check runs in a thread joined with a bound, so that a check that hangs is reported
("hung") rather than hanging the probe: the bound fails only on a hang.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from pydantic import SecretStr

from cofre.settings import HSMSettings
from hsm.errors import HSMUnavailable
from hsm.provider import provider_from_settings
from tests.support.cloudhsm_shim import ShimFaults

# Far above the check's own bound (COFRE_HSM__INIT_TIMEOUT_SECONDS, 1 s here).
HANG_BOUND = 60.0
READY_BOUND = 120.0


def main(library: str, conf: str, label: str, pin: str, fault_file: str) -> None:
    provider = provider_from_settings(
        HSMSettings.model_validate(
            {
                "library": Path(library),
                "token_label": label,
                "pin": SecretStr(pin),
                "softhsm_conf": Path(conf),
                "session_pool_size": 2,
                "init_timeout_seconds": 1,
            }
        )
    )

    def check() -> str:
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

    # C_Initialize hangs (the test made the file before this process loaded the shim).
    steps = [check(), check()]
    ShimFaults(Path(fault_file)).answer_initialize()
    deadline = time.monotonic() + READY_BOUND
    while (last := check()) != "ok" and time.monotonic() < deadline:
        time.sleep(0.1)
    steps.append(last)
    sys.stdout.write(json.dumps({"steps": steps}) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:6])
