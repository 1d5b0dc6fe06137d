"""`cofre dev --workers N` serves with N workers, as the README's CLI table and its
`COFRE_SERVER__WORKERS` row say ("`--workers` of `cofre serve` / `cofre dev` overrides
it"). Session 33: the option was applied, then dropped when `cofre dev` rebuilt its
settings to add the local witness, so the dev vault always ran one worker per core."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from cofre.settings import Settings
from cofre_cli.workers import worker_count
from tests.support.dev import clean_env, start_dev


@pytest.mark.hsm  # `cofre dev` creates a SoftHSM2 token
def test_cofre_dev_serves_with_the_workers_it_is_given(tmp_path: Path) -> None:
    # A count other than the default, so that dropping the option shows.
    default = worker_count(Settings())
    wanted = 1 if default != 1 else 2
    dev = start_dev(tmp_path / "dev", clean_env(), "--workers", str(wanted))
    starting = None
    try:
        assert dev.stdout is not None
        # The "starting" line comes before any worker serves; a vault that dies first
        # ends the output, so this loop ends either way (no clock in the verdict).
        for line in dev.stdout:
            if line.startswith("{") and '"event": "starting"' in line:
                starting = json.loads(line)
                break
    finally:
        dev.send_signal(signal.SIGTERM)
        dev.communicate(timeout=120)
    assert starting is not None, "cofre dev never logged its start"
    assert starting["workers"] == wanted
