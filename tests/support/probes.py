"""What the probe processes share (tests/support/login_probe.py, hmac_probe.py): the
provider a probe builds from its command line, and the tests' way to run one.

A probe runs in a process of its own so that the token starts logged out and the
CloudHSM shim reads its fault file when it loads; it prints one JSON object last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pydantic import SecretStr

from cofre.settings import HSMSettings
from hsm.provider import HSMProvider, provider_from_settings

ROOT = Path(__file__).resolve().parents[2]


def probe_provider(library: str, conf: str, label: str, pin: str, pool: int) -> HSMProvider:
    """The provider of a probe's command line: `library` on the token `label`."""
    return provider_from_settings(
        HSMSettings.model_validate(
            {
                "library": Path(library),
                "token_label": label,
                "pin": SecretStr(pin),
                "softhsm_conf": Path(conf),
                "session_pool_size": pool,
            }
        )
    )


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
