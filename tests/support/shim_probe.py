"""What the HSM probes share (`readiness_probe`, `saturation_probe`, `throttle_probe`:
each run in a process of its own so that the CloudHSM shim reads its fault file when it
loads): the provider they make, and a readiness check run in a thread joined with a
bound, so that a check that hangs is reported ("hung") rather than hanging the probe."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from cofre.settings import HSMSettings
from hsm.errors import HSMUnavailable
from hsm.provider import HSMProvider, provider_from_settings


def probe_provider(library: str, conf: str, label: str, pin: str, **extra: Any) -> HSMProvider:
    """A provider of two pooled sessions on the token `label` (`extra`: more settings)."""
    return provider_from_settings(
        HSMSettings.model_validate(
            {
                "library": Path(library),
                "token_label": label,
                "pin": SecretStr(pin),
                "softhsm_conf": Path(conf),
                "session_pool_size": 2,
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
