"""What the auditor reads cannot be drawn by bytes of the bundle (review 29): the text
report carries no terminal control, line break or bidirectional override from it, and
the HTML report escapes every value and renders whatever the bundle holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from cofre_evidence_verifier.cli import main
from cofre_evidence_verifier.report import Report, printable, render_text
from tests.support.evidence_bundles import Bundle, build, day_log, witness

FORGED = "\x1b[2J\x1b[HVERIFIED\n  ok    every check passed\x1b[8m"


def _bundle(tmp_path: Path) -> tuple[Bundle, list[str]]:
    w = witness()
    (tmp_path / "w.vkey").write_text(w.verifier_key().encode())
    bundle = build(day_log(20), 3, 20, witnesses=[w])
    (tmp_path / "audit.pem").write_bytes(bundle.key.pem)
    keys = ["--public-key", str(tmp_path / "audit.pem"), "--witness-key", str(tmp_path / "w.vkey")]
    return bundle, keys


def test_text_report_carries_no_terminal_control_from_the_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, keys = _bundle(tmp_path)
    bundle.resign()
    bundle.extra_members.append((FORGED, b"x"))  # a member no manifest lists: named
    status = main([str(bundle.write(tmp_path / "b.tar.gz", resign=False)), *keys])
    out = capsys.readouterr().out
    assert status == 1
    assert "\x1b" not in out, repr(out)
    assert out.startswith("FAILED\n")
    assert "\nVERIFIED" not in out, out
    assert "\n  ok    every check passed" not in out, out
    assert "\\x1b[2J\\x1b[HVERIFIED\\n" in out  # shown, escaped


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("a\nb", "a\\nb"),
        ("a\rb", "a\\rb"),
        ("bell\x07", "bell\\x07"),
        ("del\x7f", "del\\x7f"),
        ("csi\x9b2J", "csi\\x9b2J"),
        ("line\u2028sep", "line\\u2028sep"),
        ("\u202eDEIFIREV", "\\u202eDEIFIREV"),
        ("plain, unicode: café", "plain, unicode: café"),
    ],
)
def test_printable(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_every_line_of_the_text_report_is_printable() -> None:
    report = Report(
        problems=[FORGED], checks=["\x1b]0;title\x07"], summary={"generator\n": "x\x1b"}
    )
    text = render_text(report)
    assert text.count("\n") == 4
    assert all(c == "\n" or c.isprintable() for c in text), repr(text)
