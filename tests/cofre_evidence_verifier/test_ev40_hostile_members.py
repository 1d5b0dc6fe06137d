"""Session 40 (an independent QSA-side attack on the verifier): two members were still
split whole into a list of lines before a line was looked at, as `json_lines` did
before review 31.

- `audit/deleted_tokens.txt` (check 6e, session 39) was `bytes.split(b"\\n")`: a member
  at the 512 MiB cap of three-byte lines (``ab\\n``, compressing about a thousandfold)
  became some 180 million bytes objects, about 7 GB, although the check stops at the
  first line out of order. It is read in every run, whatever the manifest's signature,
  and for the previous bundle's list too.
- `requirements.md` in the HTML report (`--html`) was `str.splitlines()` and every
  line kept for its paragraph: the same member, signed by whoever holds the HSM PIN,
  made a page of hundreds of millions of strings. The exporter writes about 5 KB; the
  page now shows at most `MAX_REQUIREMENTS` characters of it and says what it left out.

Bounds are on memory traced (tracemalloc), never on time.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

from cofre_evidence_verifier.deleted_tokens import LISTED, listed_in
from cofre_evidence_verifier.html import MAX_REQUIREMENTS, render_html
from cofre_evidence_verifier.report import Report
from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import ORIGIN, build, day_log, witness

SHORT_LINES = b"b\n" + b"ab\n" * 1_000_000  # 3 MB; line 2 is already out of order


def _peak(run: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def test_a_list_of_short_lines_is_not_held_whole() -> None:
    report = Report()
    listed: set[str] = set()
    peak = _peak(lambda: listed.update(listed_in({LISTED: SHORT_LINES}, report, "")))
    assert listed == {"b"}
    assert report.problems == [
        f"deleted tokens: {LISTED} line 2 is not a token id in ascending order (one id a "
        "line, sorted, none twice)"
    ]
    # A few lines held, not a million bytes objects (over 40 MB of them).
    assert peak < len(SHORT_LINES), peak


def test_the_hostile_list_is_a_failed_verdict(tmp_path: Path) -> None:
    w = witness()
    bundle = build(day_log(20), 5, 15, witnesses=[w])
    bundle.files[LISTED] = SHORT_LINES
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        bundle.key.pem,
        witness_keys=[w.verifier_key()],
        origin=ORIGIN,
    )
    assert not report.ok
    assert any(f"{LISTED} line 2 is not a token id" in p for p in report.problems)


def test_the_html_page_shows_a_bounded_requirements_text(tmp_path: Path) -> None:
    w = witness()
    bundle = build(day_log(20), 5, 15, witnesses=[w])
    bundle.files["requirements.md"] = b"# requirements\n\nab\n" + b"ab\n" * 1_000_000
    path = bundle.write(tmp_path / "b.tar.gz")
    report = verify_bundle(path, bundle.key.pem, witness_keys=[w.verifier_key()], origin=ORIGIN)
    assert report.ok, report.problems  # signed by the audit key: the exporter's document
    page: list[str] = []
    peak = _peak(lambda: page.append(render_html(report, path)))
    assert len(page[0]) < 2 * MAX_REQUIREMENTS + 100_000
    assert "bytes of requirements.md not shown" in page[0]
    # The bundle read (its members) and a page of bounded size, not a million strings.
    assert peak < 4 * len(bundle.files["requirements.md"]), peak


def test_the_exporters_requirements_text_is_shown_whole(tmp_path: Path) -> None:
    template = Path(__file__).parents[2] / "compliance" / "requirements.md.tmpl"
    assert len(template.read_text(encoding="utf-8")) < MAX_REQUIREMENTS // 4
