"""Session 36: both verify commands fail closed on the log's identity, as they do on the
witnesses. The attack: whoever holds the HSM PIN runs a second log under another origin
(staging, disaster recovery, or one of their own), signs its checkpoints with the
production audit key and has the witnesses cosign it (they keep state per origin, so
each log is new to them). Its bundle, verified with the auditor guide's documented
command (the pinned audit key and witness keys, no `--origin`), was VERIFIED and the
report only named the log. Now that command is a usage error (exit 2, as a missing
`--public-key` is): the auditor pins the log's origin (`--origin`), or the previous
bundle of the chain pins it (`--previous`), or says `--unsafe-any-origin`, which the
verdict line names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cofre_cli.main import app
from cofre_evidence_verifier.cli import main
from tests.support.evidence_bundles import ORIGIN, AuditKey, build, chained, day_log, witness

ROGUE = "cofre-audit/dr-rogue"


@pytest.fixture
def second_log(tmp_path: Path) -> list[str]:
    """The guide's command (`BUNDLE --public-key audit.pem --witness-key w.vkey`) on a
    genuine, witnessed bundle of a second log signed with the production audit key."""
    w = witness()
    bundle = build(day_log(20), 3, 20, witnesses=[w], origin=ROGUE)
    (tmp_path / "audit.pem").write_bytes(bundle.key.pem)
    (tmp_path / "w.vkey").write_text(w.verifier_key().encode())
    path = bundle.write(tmp_path / "b.tar.gz")
    keys = ["--public-key", str(tmp_path / "audit.pem"), "--witness-key", str(tmp_path / "w.vkey")]
    return [str(path), *keys]


def test_a_second_logs_bundle_fails_the_documented_command(
    second_log: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(second_log) == 2
    captured = capsys.readouterr()
    assert "VERIFIED" not in captured.out
    assert "--origin" in captured.err
    result = CliRunner().invoke(app, ["evidence", "verify", *second_log])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "VERIFIED" not in result.output
    assert "--origin" in result.output


def test_the_pinned_origin_refuses_it_and_verifies_its_own_log(
    second_log: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*second_log, "--origin", ORIGIN]) == 1
    assert f"not of log {ORIGIN}" in capsys.readouterr().out
    assert main([*second_log, "--origin", ROGUE]) == 0
    assert capsys.readouterr().out.startswith("VERIFIED\n")


def test_any_origin_is_only_by_name_and_never_plainly_verified(
    second_log: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*second_log, "--unsafe-any-origin"]) == 0
    out = capsys.readouterr().out
    first, rest = out.split("\n", 1)
    assert first == "VERIFIED, UNSAFE: the log's origin was not pinned", out
    assert f"UNSAFE: the log's origin was not pinned; this bundle is of log {ROGUE}" in rest
    assert main([*second_log, "--unsafe-any-origin", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert report["unsafe"] == ["origin"]
    runner = CliRunner()
    result = runner.invoke(app, ["evidence", "verify", *second_log, "--unsafe-any-origin"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.output.startswith("VERIFIED, UNSAFE: the log's origin was not pinned\n")


@pytest.mark.parametrize("pin", [["--origin", ORIGIN], ["--previous", "a.tar.gz"]])
def test_any_origin_beside_a_pin_is_a_usage_error(
    second_log: list[str], pin: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*second_log, "--unsafe-any-origin", *pin]) == 2
    assert "--unsafe-any-origin" in capsys.readouterr().err
    result = CliRunner().invoke(
        app, ["evidence", "verify", *second_log, "--unsafe-any-origin", *pin]
    )
    assert result.exit_code == 2, (result.output, result.exception)
    assert "--unsafe-any-origin" in result.output


def test_the_previous_bundle_pins_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A chained bundle of the second log, given with a previous bundle of the pinned
    log (the auditor's own, verified with `--origin`), fails; given with its own log's
    previous bundle it verifies and the report says where its origin came from."""
    w, key = witness(), AuditKey()
    (tmp_path / "audit.pem").write_bytes(key.pem)
    (tmp_path / "w.vkey").write_text(w.verifier_key().encode())
    keys = ["--public-key", str(tmp_path / "audit.pem"), "--witness-key", str(tmp_path / "w.vkey")]
    for origins, status in (((ORIGIN, ROGUE), 1), ((ORIGIN, ORIGIN), 0)):
        first, second = chained(day_log(20), 10, key=key, witnesses=[w], origins=origins)
        a, b = first.write(tmp_path / "a.tar.gz"), second.write(tmp_path / "b.tar.gz")
        assert main([str(b), *keys, "--previous", str(a)]) == status
        out = capsys.readouterr().out
        if status == 1:
            assert f"previous bundle: a bundle of log {ORIGIN}, not of log {ROGUE}" in out
        else:
            assert out.startswith("VERIFIED\n"), out
            assert f"of log {ORIGIN}, the log of the previous bundle" in out


def test_an_unpinned_verdict_is_never_drawn_as_a_plain_pass(
    second_log: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review 36b: the HTML page drew `VERIFIED, UNSAFE` in the green badge of a pinned
    pass, and its UNSAFE line with a green tick, as the text report did with `ok`;
    the JSON said `"ok": true` with no verdict. Now the badge and the line are marked
    unsafe, and the JSON carries the verdict line."""
    page = tmp_path / "r.html"
    assert main([*second_log, "--unsafe-any-origin", "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "  ok    UNSAFE" not in out
    assert "\n  UNSAFE: the log's origin was not pinned; this bundle is of log" in out
    html = page.read_text(encoding="utf-8")
    assert "class='badge ok'" not in html
    assert "class='badge unsafe'" in html
    assert "&#10003; UNSAFE" not in html
    assert main([*second_log, "--unsafe-any-origin", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "VERIFIED, UNSAFE: the log's origin was not pinned"
