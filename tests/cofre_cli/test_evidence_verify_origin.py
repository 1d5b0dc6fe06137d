"""`cofre evidence verify --origin` pins the log as `cofre-verify --origin` does (review
33): a bundle of another log's checkpoints, which the audit key and the witness also
sign, fails; an origin no checkpoint can have is a usage error. Since session 36 the
log must be pinned (`--origin`, or `--previous`): unpinned is a usage error, and
`--unsafe-any-origin` verifies with a verdict that says so
(tests/cofre_evidence_verifier/test_orig36_origin_required.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cofre_cli.main import app
from tests.support.evidence_bundles import ORIGIN, build, day_log, witness

STAGING = "cofre-audit/staging"


@pytest.fixture
def staging_bundle(tmp_path: Path) -> list[str]:
    """`cofre evidence verify` arguments for a genuine, witnessed bundle of the staging log."""
    w = witness()
    bundle = build(day_log(20), 3, 20, witnesses=[w], origin=STAGING)
    (tmp_path / "audit.pem").write_bytes(bundle.key.pem)
    (tmp_path / "w.vkey").write_text(w.verifier_key().encode())
    path = bundle.write(tmp_path / "b.tar.gz")
    keys = ["--public-key", str(tmp_path / "audit.pem"), "--witness-key", str(tmp_path / "w.vkey")]
    return ["evidence", "verify", str(path), *keys]


def test_origin_pins_the_log(staging_bundle: list[str]) -> None:
    runner = CliRunner()
    unpinned = runner.invoke(app, staging_bundle)
    assert unpinned.exit_code == 2, unpinned.output
    assert "VERIFIED" not in unpinned.output
    assert "pin the log: --origin ORIGIN" in unpinned.output
    unsafe = runner.invoke(app, [*staging_bundle, "--unsafe-any-origin"])
    assert unsafe.exit_code == 0, unsafe.output
    assert unsafe.output.startswith("VERIFIED, UNSAFE: the log's origin was not pinned\n")
    assert f"of log {STAGING} verify" in unsafe.output
    assert runner.invoke(app, [*staging_bundle, "--origin", STAGING]).exit_code == 0
    pinned = runner.invoke(app, [*staging_bundle, "--origin", ORIGIN])
    assert pinned.exit_code == 1, pinned.output
    assert pinned.output.startswith("FAILED\n")
    assert f"not of log {ORIGIN}" in pinned.output


@pytest.mark.parametrize("origin", ["", " cofre-audit/prod", "cofre-audit/prod\n"])
def test_an_origin_no_checkpoint_can_have_is_a_usage_error(
    staging_bundle: list[str], origin: str
) -> None:
    result = CliRunner().invoke(app, [*staging_bundle, "--origin", origin])
    assert result.exit_code == 2, result.output
    assert "--origin" in result.output
