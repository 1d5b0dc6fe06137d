"""What the probe processes share (tests/support/login_probe.py, hmac_probe.py,
readiness_probe.py, saturation_probe.py, throttle_probe.py): the provider a probe builds
from its command line, a readiness check run in a thread joined with a bound (so that a
check that hangs is reported, "hung", rather than hanging the probe), and the tests' way
to run one.

A probe runs in a process of its own so that the token starts logged out and the
CloudHSM shim reads its fault file when it loads; it prints one JSON object last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from cofre.settings import HSMSettings
from hsm.errors import HSMUnavailable
from hsm.provider import HSMProvider, provider_from_settings

ROOT = Path(__file__).resolve().parents[2]


def probe_provider(
    library: str, conf: str, label: str, pin: str, pool: int = 2, **extra: Any
) -> HSMProvider:
    """The provider of a probe's command line: `library` on the token `label`, `pool`
    sessions (`extra`: more settings)."""
    return provider_from_settings(
        HSMSettings.model_validate(
            {
                "library": Path(library),
                "token_label": label,
                "pin": SecretStr(pin),
                "softhsm_conf": Path(conf),
                "session_pool_size": pool,
                **extra,
            }
        )
    )


def bounded(call: Callable[[], str], bound: float) -> str:
    """What `call` answered, ``HSMUnavailable: …`` if it raised that, or ``hung`` if it
    had not returned after `bound` seconds (the bound fails only on a hang)."""
    outcome: list[str] = []

    def run() -> None:
        try:
            outcome.append(call())
        except HSMUnavailable as exc:
            outcome.append(f"HSMUnavailable: {exc}")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(bound)
    return outcome[0] if outcome else "hung"


def check(provider: HSMProvider, bound: float) -> str:
    """One readiness check (`HSMProvider.health_check`, what `/readyz` asks): ``ok``,
    ``HSMUnavailable: …`` or ``hung``."""

    def run() -> str:
        provider.health_check()
        return "ok"

    return bounded(run, bound)


def until_ready(provider: HSMProvider, bound: float, ready_bound: float) -> str:
    """Checks until one passes (for at most `ready_bound` seconds), the last one's answer."""
    deadline = time.monotonic() + ready_bound
    while (last := check(provider, bound)) != "ok" and time.monotonic() < deadline:
        time.sleep(0.1)
    return last


def run_probe(
    module: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> dict[str, object]:
    """Run `python -m <module> <args>` with this tree on its path; its last line, parsed.
    `timeout` bounds a hang, never a duration."""
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "verifier" / "src")])
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=environment,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    parsed: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return parsed
