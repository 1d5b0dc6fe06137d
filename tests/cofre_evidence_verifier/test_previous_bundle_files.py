"""With `--previous`, what is read of the previous bundle must be what its signed
manifest lists.

The chain check compares the policy this bundle lists as in force at its start with the
previous bundle's `policy/policy.toml` (review 31: one bundle alone cannot show that a
policy reload just before its start was left out). Only the previous bundle's manifest
signature was checked, not its files: an operator who left the stricter reload out of
the second bundle replaced (or removed) the first bundle's `policy.toml` to match, and
the chain verified. Every file the previous bundle's manifest lists must now match it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import AuditKey, chained, day_log, policy_payload, witness

PERMISSIVE = '[identities."spiffe://cofre/payments"]\noperations = ["tokenize", "detokenize"]\n'
STRICT = '[identities."spiffe://cofre/payments"]\noperations = ["tokenize"]\n'


@pytest.mark.parametrize("tamper", ["replace", "remove"])
def test_the_previous_bundles_policy_must_be_the_one_it_signed(tmp_path: Path, tamper: str) -> None:
    w, key = witness(), AuditKey()
    log = day_log(20)
    log[0] = policy_payload("2026-03-01T00:00:00.000000Z", PERMISSIVE)
    log[8] = policy_payload("2026-03-01T08:00:08.000000Z", STRICT, action="policy.reload")
    # The second bundle shows the permissive policy in force at its start, leaving out
    # the stricter reload at entry 8 (in the first bundle's period).
    first, second = chained(log, 10, key=key, witnesses=[w], second_policies=[0])
    first.resign()  # its manifest lists the genuine policy.toml (STRICT)
    if tamper == "replace":
        first.files["policy/policy.toml"] = PERMISSIVE.encode()
    else:
        del first.files["policy/policy.toml"]
    report = verify_bundle(
        second.write(tmp_path / "b.tar.gz"),
        key.pem,
        first.write(tmp_path / "a.tar.gz", resign=False),
        witness_keys=[w.verifier_key()],
    )
    assert not report.ok, report.checks
    assert any("previous bundle: policy/policy.toml" in p for p in report.problems), report.problems


def test_a_genuine_chain_still_verifies(tmp_path: Path) -> None:
    w, key = witness(), AuditKey()
    log = day_log(20)
    log[8] = policy_payload("2026-03-01T08:00:08.000000Z", STRICT, action="policy.reload")
    first, second = chained(log, 10, key=key, witnesses=[w], second_policies=[8])
    report = verify_bundle(
        second.write(tmp_path / "b.tar.gz"),
        key.pem,
        first.write(tmp_path / "a.tar.gz"),
        witness_keys=[w.verifier_key()],
    )
    assert report.ok, report.problems
