"""Review 31 (a helper attacking the hardened verifier): a sparse tar member passed the
decompressed-size limit, a policy version from after the period was accepted as the
one in force at its end, and a file of a million bad lines made a million problems.
Each test failed before its fix."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cofre_evidence_verifier.bundle import MAX_LINES, json_lines
from cofre_evidence_verifier.report import MAX_PROBLEMS, Report
from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import (
    ORIGIN,
    AuditKey,
    build,
    chained,
    day_log,
    policy_payload,
    witness,
)

PERMISSIVE = '[identities."spiffe://cofre/payments"]\noperations = ["tokenize", "detokenize"]\n'
STRICT = '[identities."spiffe://cofre/payments"]\noperations = ["tokenize"]\n'


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar writes the sparse member")
def test_a_sparse_member_is_refused_before_it_is_filled(tmp_path: Path) -> None:
    holes = tmp_path / "holes"
    holes.mkdir()
    with (holes / "m0").open("wb") as handle:
        handle.write(b"x")
        handle.truncate(2 << 20)
    out = tmp_path / "sparse.tar.gz"
    subprocess.run(
        ["tar", "--sparse", "--format=posix", "-czf", str(out), "-C", str(holes), "m0"],
        check=True,
    )
    w = witness()
    key = build(day_log(20), 5, 15, witnesses=[w]).key
    report = verify_bundle(out, key.pem, witness_keys=[w.verifier_key()], origin=ORIGIN)
    assert not report.ok
    assert report.problems == ["cannot read the bundle: unsafe member in bundle: 'm0'"]


def test_a_policy_version_from_after_the_period_is_refused(tmp_path: Path) -> None:
    w = witness()
    log = day_log(20)
    log[3] = policy_payload("2026-03-01T03:00:03.000000Z", STRICT, action="policy.reload")
    log[17] = policy_payload("2026-03-01T17:00:17.000000Z", PERMISSIVE, action="policy.reload")
    genuine = build(log, 5, 15, witnesses=[w])
    assert verify_bundle(
        genuine.write(tmp_path / "g.tar.gz"),
        genuine.key.pem,
        witness_keys=[w.verifier_key()],
        origin=ORIGIN,
    ).ok
    later = build(log, 5, 15, witnesses=[w], policy_indices=[3, 17])
    report = verify_bundle(
        later.write(tmp_path / "f.tar.gz"),
        later.key.pem,
        witness_keys=[w.verifier_key()],
        origin=ORIGIN,
    )
    assert "policy/versions.jsonl: entry 17 is a policy version from after the period" in (
        report.problems
    )


def test_problems_and_lines_are_bounded() -> None:
    report = Report()
    for i in range(MAX_PROBLEMS + 50):
        report.fail(f"problem {i}")
    assert len(report.problems) == MAX_PROBLEMS + 1
    assert not report.ok
    lines = json_lines(b"{}\n" * 10, "x.jsonl", report, most=4)
    assert len(lines) == 4
    assert MAX_LINES >= 1_500_000  # a member of MAX_FILE holds about that many entries


def test_a_policy_change_left_out_between_chained_bundles_fails(tmp_path: Path) -> None:
    """Review 31 (and 29's M1): the second bundle lists the old permissive policy as in
    force at its start, leaving out the stricter reload made during the first period."""
    w, key = witness(), AuditKey()
    log = day_log(20)
    log[0] = policy_payload("2026-03-01T00:00:00.000000Z", PERMISSIVE)
    log[8] = policy_payload("2026-03-01T08:00:08.000000Z", STRICT, action="policy.reload")
    keys = [w.verifier_key()]
    for listed, ok in (([8], True), ([0], False)):
        first, second = chained(log, 10, key=key, witnesses=[w], second_policies=listed)
        report = verify_bundle(
            second.write(tmp_path / "b.tar.gz"),
            key.pem,
            first.write(tmp_path / "a.tar.gz"),
            witness_keys=keys,
        )
        assert report.ok is ok, report.problems
    assert any("policy change between them" in p for p in report.problems)
