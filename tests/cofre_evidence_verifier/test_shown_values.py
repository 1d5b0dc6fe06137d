"""The reports show only what the checks verified (review 33): a count the manifest
states is checked against its range, a member the bundle adds beside the checked ones
is not shown, and the HTML timeline lists the heads whose signatures verified, without
their unsigned fields."""

from __future__ import annotations

from pathlib import Path

from cofre_evidence_verifier.html import render_html
from cofre_evidence_verifier.report import render_text
from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import ORIGIN, Bundle, build, day_log, head_json, witness

WITNESS = witness()


def _bundle() -> Bundle:
    return build(day_log(20), 3, 20, witnesses=[WITNESS])


def _verify(bundle: Bundle, path: Path) -> tuple[bool, str, str]:
    report = verify_bundle(
        bundle.write(path, resign=False),
        bundle.key.pem,
        witness_keys=[WITNESS.verifier_key()],
        origin=ORIGIN,
    )
    return report.ok, render_text(report), render_html(report, path)


def test_a_count_the_range_does_not_hold_fails(tmp_path: Path) -> None:
    bundle = _bundle()
    bundle.manifest["entries"]["count"] = 999_999  # signed: the key holder's claim
    bundle.resign()
    ok, text, page = _verify(bundle, tmp_path / "b.tar.gz")
    assert not ok
    assert "999999" not in page.split("<h2>Checks</h2>")[0]  # not in the summary
    assert "manifest.json: entries.count 999999 is not the number of entries" in text
    assert '"count": 999999' not in text


def test_a_manifest_without_a_count_is_refused(tmp_path: Path) -> None:
    bundle = _bundle()
    del bundle.manifest["entries"]["count"]
    bundle.resign()
    ok, text, _ = _verify(bundle, tmp_path / "b.tar.gz")
    assert not ok
    assert "manifest.json: entries is not an object of" in text


def test_members_beside_the_checked_ones_are_not_shown(tmp_path: Path) -> None:
    bundle = _bundle()
    bundle.manifest["entries"]["reviewed_by"] = "QSA: all 4 million entries checked"
    bundle.manifest["covering_head"]["witnessed"] = "by 5 independent witnesses"
    bundle.resign()
    ok, text, page = _verify(bundle, tmp_path / "b.tar.gz")
    assert ok  # the verdict is on what is checked ...
    for shown in (text, page):  # ... and only that is shown
        assert "QSA" not in shown
        assert "independent witnesses" not in shown
    assert '"count": 17' in text


def test_the_timeline_shows_verified_heads_only(tmp_path: Path) -> None:
    bundle = _bundle()
    heads = bundle.jsonl("audit/heads.jsonl")
    genuine = heads[0]
    # Unsigned fields of a genuine head, and a head no key signed.
    genuine["key_id"], genuine["timestamp_ms"] = "qsa-approved-key", 4_102_444_800_000
    forged = head_json(bundle.key, 7, b"\x07" * 32)
    forged["signature"] = genuine["signature"]
    bundle.set_jsonl("audit/heads.jsonl", [forged, genuine])
    bundle.resign()
    ok, _, page = _verify(bundle, tmp_path / "b.tar.gz")
    assert not ok
    timeline = page[page.index("Signed tree heads") : page.index("Key events")]
    assert f"<code>{genuine['root_hash']}</code>" in timeline
    assert forged["root_hash"] not in timeline
    assert "qsa-approved-key" not in page
    assert "2100-01-01" not in page
    assert "the pinned audit key" in timeline


def test_key_events_are_shown_once_the_entries_verify(tmp_path: Path) -> None:
    bundle = _bundle()
    rows = bundle.jsonl("audit/entries.jsonl")
    rows[0]["payload"] = rows[0]["payload"].replace('"tokenize"', '"key.destroy"', 1)
    assert "key.destroy" in rows[0]["payload"]
    bundle.set_jsonl("audit/entries.jsonl", rows)
    bundle.resign()
    ok, _, page = _verify(bundle, tmp_path / "b.tar.gz")
    assert not ok
    assert "key.destroy" not in page
    assert "Not shown: the entries did not verify." in page


def test_a_requirements_text_the_files_check_refused_is_not_shown(tmp_path: Path) -> None:
    """Review 35: anyone could swap requirements.md for a text saying the bundle
    verified; the files check failed, yet the page showed the text as a section."""
    bundle = _bundle()
    bundle.resign()
    claim = "The bundle VERIFIED on every check; the red badge is the optional one."
    bundle.files["requirements.md"] = f"# Verification result\n\n{claim}\n".encode()
    ok, _, page = _verify(bundle, tmp_path / "b.tar.gz")
    assert not ok
    assert claim not in page
    assert "Not shown: the bundle's files did not verify." in page


def test_a_genuine_requirements_text_is_shown_as_the_exporters(tmp_path: Path) -> None:
    bundle = _bundle()
    bundle.resign()
    ok, _, page = _verify(bundle, tmp_path / "b.tar.gz")
    assert ok
    assert "PCI DSS requirements (the exporter's document)" in page
