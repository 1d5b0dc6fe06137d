"""`cofre dev` gives each dev officer and the auditor a SoftHSM2 token of their own (apart
from the vault's), registers its key in the dev policy, and `--as NAME` finds it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cofre_cli.devenv import ensure_dev_environment
from policies.loader import load_policy
from vault.httpsig import jwk_thumbprint


@pytest.mark.hsm
def test_dev_officers_get_their_own_tokens(tmp_path: Path) -> None:
    env = ensure_dev_environment(tmp_path / "dev", port=18443)
    officers = env.data_dir / "officers"
    policy = load_policy(env.data_dir / "policy.toml").policy
    registered = {
        uri.rsplit("/", 1)[1]: rules.mfa_public_key
        for uri, rules in policy.identities.items()
        if rules.mfa_public_key is not None
    }
    assert set(registered) == {"officer-alice", "officer-bob", "auditor"}
    for name in registered:
        # PINs in 0600 files, never on a command line.
        assert stat.S_IMODE((officers / f"{name}.pin").stat().st_mode) == 0o600
    # Each token is its own: three different keys.
    assert len(set(registered.values())) == 3

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    shown = subprocess.run(
        [sys.executable, "-m", "cofre_cli", "mfa", "init", "--as", "officer-bob"],
        env={**clean, "COFRE_CONFIG": str(env.config_file)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    # The key already exists: init shows it, and it is the one the policy registers.
    bob = registered["officer-bob"]
    assert bob is not None
    assert f"keyid {jwk_thumbprint(bob.encode())}" in shown.stdout

    # A second run of the dev environment creates nothing and keeps the keys.
    again = ensure_dev_environment(tmp_path / "dev", port=18443)
    assert load_policy(again.data_dir / "policy.toml").policy == policy


@pytest.mark.hsm
def test_first_runs_at_once_set_up_one_environment(tmp_path: Path) -> None:
    """Review 34: three first `cofre dev` runs at once made two officer-alice tokens,
    and every later run failed on "more than one token labelled 'officer-alice'"."""
    data_dir = tmp_path / "dev"
    with ThreadPoolExecutor(3) as pool:
        runs = [pool.submit(ensure_dev_environment, data_dir, 18443) for _ in range(3)]
        made = [run.result() for run in runs]
    assert sum(env.created for env in made) == 1
    again = ensure_dev_environment(data_dir, port=18443)  # raised before
    assert not again.created
