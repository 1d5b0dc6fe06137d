"""Session 36, with the real exporter and the real offline verifier: a policy whose text
the audit log would record masked is refused at start, and a policy the loader takes
makes a bundle that verifies.

Before, a comment naming a merchant number (12 digits in a row) was recorded masked in
the `policy.load` entry, whose SHA-256 is of the text as read: the verifier's check 6
failed every bundle covering the policy (tests/policies/test_res36_masked_policy_text.py
for the loader's message)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hsm.provider import HSMProvider
from policies.errors import PolicyInvalid
from tests.api.conftest import running_vault
from tests.support.vault_evidence import export_to, verify_by_vault_key

MASKED = "\n# acquirer merchant id 123456789012, reviewed 2026-12-05\n"
# Eleven digits, dates, a digest-sized hex word: the log records them as written.
KEPT = (
    "\n# acquirer merchant id 12345678901, reviewed 2026-12-05T10:11:12Z\n"
    "# previous policy sha256 0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9\n"
)


def test_a_policy_the_log_would_mask_is_refused_at_start(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    with (
        pytest.raises(PolicyInvalid, match=r"line \d+, column \d+") as refused,
        running_vault(tmp_path, hsm_provider, extra_policy=MASKED) as vault,
    ):
        # Reached only while such a policy is served: what the auditor would see.
        started = datetime.now(UTC) - timedelta(seconds=5)
        report = verify_by_vault_key(export_to(vault, started, tmp_path / "b.tgz"), vault)
        pytest.fail(f"served a policy the log records masked; verifier: {report.problems}")
    assert "123456789012" not in str(refused.value)


def test_a_policy_the_loader_takes_makes_a_bundle_that_verifies(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    with running_vault(tmp_path, hsm_provider, extra_policy=KEPT) as vault:
        started = datetime.now(UTC) - timedelta(seconds=5)
        report = verify_by_vault_key(export_to(vault, started, tmp_path / "b.tgz"), vault)
    assert report.ok, report.problems
    assert "policy" in report.passed_checks, report.passed_checks
