"""Review 35: the auditor's own inputs ended both verify commands with a traceback: a
witness key file that is not UTF-8 (a key file handed over out of band, saved by an
editor as UTF-16), an `--html` path that cannot be written, and, for `cofre evidence
verify`, a `--public-key` file that does not exist. Each is now a usage error (exit 2)
that names the file's problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cofre_cli.main import app
from cofre_evidence_verifier.cli import main
from tests.support.evidence_bundles import ORIGIN, build, day_log, witness


@pytest.fixture
def arguments(tmp_path: Path) -> list[str]:
    """A genuine witnessed bundle and its keys, as both commands take them."""
    w = witness()
    bundle = build(day_log(20), 3, 20, witnesses=[w])
    (tmp_path / "audit.pem").write_bytes(bundle.key.pem)
    (tmp_path / "w.vkey").write_text(w.verifier_key().encode())
    path = bundle.write(tmp_path / "b.tar.gz")
    keys = ["--public-key", str(tmp_path / "audit.pem"), "--witness-key", str(tmp_path / "w.vkey")]
    return [str(path), *keys, "--origin", ORIGIN]


def _utf16_key(tmp_path: Path) -> Path:
    vkey = (tmp_path / "w.vkey").read_text()
    (tmp_path / "w16.vkey").write_bytes(vkey.encode("utf-16"))
    return tmp_path / "w16.vkey"


def test_a_witness_key_not_in_utf8_is_a_usage_error(
    tmp_path: Path, arguments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*arguments, "--witness-key", str(_utf16_key(tmp_path))]) == 2
    assert "cannot read a witness key" in capsys.readouterr().err
    result = CliRunner().invoke(
        app, ["evidence", "verify", *arguments, "--witness-key", str(_utf16_key(tmp_path))]
    )
    assert result.exit_code == 2, (result.output, result.exception)
    assert "cannot read a witness key" in result.output


def test_an_html_report_that_cannot_be_written_is_a_usage_error(
    tmp_path: Path, arguments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "no-such-directory" / "r.html")
    assert main([*arguments, "--html", out]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith("VERIFIED\n")  # the verdict is still shown
    assert "cannot write the HTML report" in captured.err
    result = CliRunner().invoke(app, ["evidence", "verify", *arguments, "--html", out])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "cannot write the HTML report" in result.output


def test_a_missing_public_key_is_a_usage_error(tmp_path: Path, arguments: list[str]) -> None:
    missing = [a if not a.endswith("audit.pem") else str(tmp_path / "none.pem") for a in arguments]
    assert main(missing) == 2
    result = CliRunner().invoke(app, ["evidence", "verify", *missing])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "cannot read the public key" in result.output
