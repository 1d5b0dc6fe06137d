"""What the auditor reads cannot be drawn by bytes of the bundle (review 29): the text
report carries no terminal control, line break or bidirectional override from it, and
the HTML report escapes every value and renders whatever the bundle holds."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from cofre_evidence_verifier.cli import main
from cofre_evidence_verifier.report import Report, printable, render_text
from tests.support.evidence_bundles import ORIGIN, Bundle, build, day_log, payload, witness

FORGED = "\x1b[2J\x1b[HVERIFIED\n  ok    every check passed\x1b[8m"


def _bundle(tmp_path: Path) -> tuple[Bundle, list[str]]:
    w = witness()
    (tmp_path / "w.vkey").write_text(w.verifier_key().encode())
    bundle = build(day_log(20), 3, 20, witnesses=[w])
    (tmp_path / "audit.pem").write_bytes(bundle.key.pem)
    keys = ["--public-key", str(tmp_path / "audit.pem"), "--witness-key", str(tmp_path / "w.vkey")]
    keys += ["--origin", ORIGIN]
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
        # Review 33: invisible characters a list of code points left out.
        ("arabic\u061cmark", "arabic\\u061cmark"),
        ("zero\u200bwidth\u200c\u200djoin", "zero\\u200bwidth\\u200c\\u200djoin"),
        ("word\u2060joiner\u2064", "word\\u2060joiner\\u2064"),
        ("\ufeffbom", "\\ufeffbom"),
        ("tag\U000e0041", "tag\\U000e0041"),
        ("private\ue000use", "private\\ue000use"),
        ("lone\ud800surrogate", "lone\\ud800surrogate"),
        ("unassigned\u0378", "unassigned\\u0378"),
        ("plain, unicode: ½, ẞ, 中文", "plain, unicode: ½, ẞ, 中文"),
        # Review 35: blank letters and symbols, other spaces, combining marks, and a
        # backslash, which made a literal "\u202e" look like an escape written here.
        ("no-break\u00a0space\u2003em\u3000wide", "no-break\\xa0space\\u2003em\\u3000wide"),
        ("fill\u3164er\u115f\u1160\uffa0", "fill\\u3164er\\u115f\\u1160\\uffa0"),
        ("braille\u2800blank", "braille\\u2800blank"),
        ("strike\u0336d\u20e0", "strike\\u0336d\\u20e0"),
        ("literal \\u202e", "literal \\\\u202e"),
    ],
)
def test_printable(raw: str, shown: str) -> None:
    # Compared as ASCII: a failure's diff then never carries a lone surrogate, which the
    # session's output scan (tests/support/leakguard.py) cannot encode.
    assert ascii(printable(raw)) == ascii(shown)


BIDI_CONTROLS = [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C]


def test_every_format_character_and_bidi_control_is_shown_escaped() -> None:
    """Every character of category Cf (zero-width, bidirectional, BOM, tags...) and of
    the control and separator categories, whatever the Unicode version lists: none
    reaches the report as itself."""
    unprintable = {"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"}
    chars = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) in unprintable]
    assert {chr(c) for c in BIDI_CONTROLS} <= set(chars)
    shown = printable("".join(chars))
    assert shown.isascii(), [c for c in shown if not c.isascii()][:10]
    assert shown == "".join(ascii(c)[1:-1] for c in chars)


def test_every_line_of_the_text_report_is_printable() -> None:
    report = Report(
        problems=[FORGED], checks=["\x1b]0;title\x07"], summary={"generator\n": "x\x1b"}
    )
    text = render_text(report)
    assert text.count("\n") == 4
    assert all(c == "\n" or c.isprintable() for c in text), repr(text)


# --- M4: the HTML report ---------------------------------------------------------------
PAGE_FORGERY = (
    "1</td></tr></table><style>.badge.fail,li.fail{display:none}</style><h1><span "
    "class='badge ok'>VERIFIED</span></h1><script>alert(1)</script><table><tr><td>"
)


def _html(tmp_path: Path, bundle: Bundle, keys: list[str], *, resign: bool = True) -> str:
    out = tmp_path / "report.html"
    status = main(
        [str(bundle.write(tmp_path / "b.tar.gz", resign=resign)), *keys, "--html", str(out)]
    )
    assert status == 1  # every bundle below FAILS ...
    return out.read_text(encoding="utf-8")  # ... and its page is written


def test_html_report_escapes_every_bundle_value(tmp_path: Path) -> None:
    bundle, keys = _bundle(tmp_path)
    heads = bundle.jsonl("audit/heads.jsonl")
    heads.append({**heads[0], "tree_size": PAGE_FORGERY})
    heads.append({**heads[0], "key_id": PAGE_FORGERY, "root_hash": PAGE_FORGERY})
    bundle.set_jsonl("audit/heads.jsonl", heads)
    entries = bundle.jsonl("audit/entries.jsonl")
    entries[0]["payload"] = payload(
        "key.rotation.approve", "2026-03-01T03:00:00.000000Z", key_id=PAGE_FORGERY
    )
    bundle.set_jsonl("audit/entries.jsonl", entries)
    bundle.files["requirements.md"] = f"| a | b |\n|---|---|\n| {PAGE_FORGERY} | x |\n".encode()
    page = _html(tmp_path, bundle, keys)
    for tag in ("<script", "<style>.badge", "<span class='badge ok'"):
        assert tag not in page
    assert page.count("<table>") == page.count("</table>")


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe\n",  # not UTF-8
        b"not json\n",
        b'{"tree_size": 20, "timestamp_ms": 1000000000000000000000000000000}\n',
        b'{"tree_size": 20, "timestamp_ms": -100000000000000000}\n',
        b'{"tree_size": 20, "timestamp_ms": 1e400}\n',
        b'{"tree_size": {"a": [1]}, "key_id": null}\n',
    ],
)
def test_html_report_of_a_malformed_heads_file_does_not_crash(
    tmp_path: Path, content: bytes
) -> None:
    bundle, keys = _bundle(tmp_path)
    bundle.resign()
    bundle.files["audit/heads.jsonl"] = content
    assert "FAILED" in _html(tmp_path, bundle, keys, resign=False)


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\n",
        b'{"index": 3, "payload": "{\\"action\\": \\"key.x\\"}"}\n',
        b'{"index": 3}\n',
    ],
)
def test_html_report_of_malformed_entries_does_not_crash(tmp_path: Path, content: bytes) -> None:
    bundle, keys = _bundle(tmp_path)
    bundle.resign()
    bundle.files["audit/entries.jsonl"] = content
    bundle.files["requirements.md"] = b"\xff\xfe"
    assert "FAILED" in _html(tmp_path, bundle, keys, resign=False)


def test_both_reports_show_invisible_characters_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A member name with a zero-width space, a word joiner, a BOM and an Arabic letter
    mark (review 33): each report names it with the characters visible."""
    bundle, keys = _bundle(tmp_path)
    bundle.resign()
    bundle.extra_members.append(("requirements\u200b.md\u2060\ufeff\u061c", b"x"))
    page = _html(tmp_path, bundle, keys, resign=False)
    text = capsys.readouterr().out
    for report in (text, page):
        assert "requirements\\u200b.md\\u2060\\ufeff\\u061c" in report
        assert not {"\u200b", "\u2060", "\ufeff", "\u061c"} & set(report)
