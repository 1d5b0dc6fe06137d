"""`cofre hsm selftest` passes on SoftHSM2 and on the CloudHSM-behaviour shim, and leaves
no key behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hsm.errors import HSMTokenInService
from hsm.provider import HSMProvider
from hsm.selftest import refuse_serving_token, render_table, run_selftest
from hsm.softhsm import init_softhsm_token
from tests.support.cloudhsm_shim import CloudHSMShim
from tests.support.softhsm import SoftHSMToken


def test_selftest_passes_and_cleans_up(hsm_provider: HSMProvider) -> None:
    before = {k.label for k in hsm_provider.list_keys()}
    report = run_selftest(hsm_provider, count=5, threads=2)
    assert report.passed, render_table(report)
    assert report.wrap_algorithm == "aes-kwp-rfc5649"
    assert [t.operation for t in report.timings] == [
        "wrap (generate data key)",
        "unwrap",
        "rewrap (KEK rotation)",
        "hmac-sha256",
        "ecdsa-p256 sign",
        "aes-gcm seal (codes)",
    ]
    # Session 34: security codes run AES-GCM in the token, where CloudHSM picks the IV
    # (docs/cloudhsm.md); the go-live check now proves that path too.
    passed = {c.name for c in report.checks if c.passed}
    assert {"create csc key", "AES-GCM seal and open", "destroy csc key"} <= passed
    assert all(t.per_second > 0 and t.p95_ms >= t.p50_ms for t in report.timings)
    assert {k.label for k in hsm_provider.list_keys()} == before
    assert "selftest PASSED" in render_table(report)


def _selftest_cli(
    softhsm_token: SoftHSMToken, label: str, shim: CloudHSMShim | None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    env.update(
        COFRE_HSM__TOKEN_LABEL=label,
        COFRE_HSM__PIN=softhsm_token.user_pin,
        COFRE_HSM__SOFTHSM_CONF=str(softhsm_token.conf),
    )
    if shim is not None:
        env.update(shim.env())
        env["COFRE_HSM__LIBRARY"] = str(shim.library)
    return subprocess.run(
        [sys.executable, "-m", "cofre_cli", "hsm", "selftest", "--json", "--count", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("backend", ["softhsm2", "cloudhsm-shim"])
def test_cli_selftest_json(
    backend: str, softhsm_token: SoftHSMToken, cloudhsm_shim: CloudHSMShim
) -> None:
    # A token not yet initialised: the selftest runs before `cofre hsm init`.
    label = f"{softhsm_token.label}-{'sts' if backend == 'cloudhsm-shim' else 'sth'}"
    init_softhsm_token(softhsm_token.conf, label, softhsm_token.so_pin, softhsm_token.user_pin)
    shim = cloudhsm_shim if backend == "cloudhsm-shim" else None
    result = _selftest_cli(softhsm_token, label, shim)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is True
    expected = (
        "CLOUDHSM_AES_KEY_WRAP_ZERO_PAD" if backend == "cloudhsm-shim" else "AES_KEY_WRAP_PAD"
    )
    assert report["wrap_mechanism"] == expected
    assert softhsm_token.user_pin not in result.stdout + result.stderr


def test_the_selftest_refuses_a_token_in_service(
    softhsm_token: SoftHSMToken, hsm_provider: HSMProvider
) -> None:
    """Review 34: run on the token a vault serves from, its temporary keys were keys the
    registry did not know, and every node's /readyz failed while it ran."""
    before = {k.label for k in hsm_provider.list_keys()}
    with pytest.raises(HSMTokenInService):
        refuse_serving_token(hsm_provider)
    result = _selftest_cli(softhsm_token, softhsm_token.label, None)
    assert result.returncode == 1
    assert "error [hsm_token_in_service]" in result.stderr
    assert {k.label for k in hsm_provider.list_keys()} == before
