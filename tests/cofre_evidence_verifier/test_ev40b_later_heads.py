"""Session 40: a signed head between the period's end and the covering head.

The exporter puts in `audit/heads.jsonl` every head from the period's first entry up to
the covering head. Review 30 made each head whose size lies within the period's entries
a proven prefix of the covering head; a head between the period's end and the covering
head was checked by its signature only. A holder of the HSM PIN (who signs heads with
the vault's audit key but is no witness) put there a head of another tree, and it was
listed in the report's timeline and the --html page as a head of this log. The bundle
holds no leaves there, so the verifier cannot prove such a head either way: it now
leaves every head it has not proven a prefix of the covering head out of the timeline
and says how many it left out.
"""

from __future__ import annotations

from pathlib import Path

from cofre_evidence_verifier.html import render_html
from cofre_evidence_verifier.merkle import leaf_hash
from cofre_evidence_verifier.report import Report, render_text
from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import (
    ORIGIN,
    Bundle,
    b64,
    build,
    cutoff,
    day_log,
    head_json,
    mth,
    witness,
)

WITNESS = witness()
LOG = [*day_log(20), cutoff()]
# Entries 3..14 of a log of 21 covered by its head of size 21: sizes 16..20 lie between
# the period's end and the covering head.
START, END, SIZE = 3, 15, 21


def _bundle() -> Bundle:
    return build(LOG, START, END, size=SIZE, witnesses=[WITNESS])


def _verify(bundle: Bundle, path: Path) -> Report:
    return verify_bundle(
        bundle.write(path), bundle.key.pem, witness_keys=[WITNESS.verifier_key()], origin=ORIGIN
    )


def _sizes(report: Report) -> list[int]:
    return [size for size, _root, _key in report.verified_heads]


def test_a_forked_head_after_the_period_is_not_shown_as_this_logs(tmp_path: Path) -> None:
    """Before the fix: VERIFIED, the forked head 18 in the timeline and on the page."""
    bundle = _bundle()
    rewritten = [leaf_hash(p.encode()) for i, p in enumerate(LOG[:19]) if i != 16]
    rewritten.append(leaf_hash(b'{"action":"tokenize","time":"2026-03-01T23:00:00.000000Z"}'))
    forked = head_json(bundle.key, 18, mth(rewritten))
    bundle.set_jsonl("audit/heads.jsonl", [forked, *bundle.jsonl("audit/heads.jsonl")])
    path = tmp_path / "b.tar.gz"
    report = _verify(bundle, path)
    # Not provable either way from the bundle: the verdict stands, the head is not shown.
    assert report.ok, report.problems
    assert 18 not in _sizes(report), report.verified_heads
    page = render_html(report, path)
    timeline = page[page.index("Signed tree heads") : page.index("Key events")]
    assert forked["root_hash"] not in timeline
    assert "1 signed head not shown" in timeline, timeline
    assert any("1 signed head" in c and "not shown" in c for c in report.checks), report.checks
    assert "1 signed head" in render_text(report)


def test_genuine_heads_after_the_period_are_counted_not_shown(tmp_path: Path) -> None:
    """A genuine head there is no more proven than a forked one (the bundle holds no
    leaves after the period): left out and counted, the bundle still VERIFIED."""
    bundle = _bundle()
    leaves = [leaf_hash(p.encode()) for p in LOG]
    period = [head_json(bundle.key, n, mth(leaves[:n])) for n in (4, 15)]
    after = [head_json(bundle.key, n, mth(leaves[:n])) for n in (16, 20)]
    bundle.set_jsonl("audit/heads.jsonl", [*period, *after, *bundle.jsonl("audit/heads.jsonl")])
    report = _verify(bundle, tmp_path / "b.tar.gz")
    assert report.ok, report.problems
    assert _sizes(report) == [4, 15, SIZE]
    assert any("2 signed heads" in c for c in report.checks), report.checks


def test_a_head_before_the_period_is_not_shown_either(tmp_path: Path) -> None:
    """The exporter sends none below the period; one added there is no more proven."""
    bundle = _bundle()
    forked = head_json(bundle.key, 2, mth([leaf_hash(b"x")] * 2))
    bundle.set_jsonl("audit/heads.jsonl", [forked, *bundle.jsonl("audit/heads.jsonl")])
    report = _verify(bundle, tmp_path / "b.tar.gz")
    assert _sizes(report) == [SIZE]
    assert b64(b"x") not in str(report.verified_heads)
