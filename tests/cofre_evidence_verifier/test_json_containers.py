"""The number of arrays and objects a bundle's JSON may make the parser build is bounded.

The member caps bound a bundle's bytes, not what its JSON parses to: two bytes of
``[{},{},…]`` become a 64-byte dict, so a manifest of the member cap (parsed before any
check, whoever signed it) or one line of an entries file held some 25 times its size,
13 GB for a 512 MiB member, on the auditor's machine.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from cofre_evidence_verifier import bundle as bundle_module
from cofre_evidence_verifier.bundle import (
    MAX_JSON_CONTAINERS,
    MAX_LINES_BRACKETS,
    json_lines,
    load_json,
)
from cofre_evidence_verifier.errors import MalformedBundle
from cofre_evidence_verifier.report import Report
from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import ORIGIN, build, day_log, witness

MANY = b"[" + b"{}," * MAX_JSON_CONTAINERS + b"{}]"


def _peak(run: object) -> int:
    assert callable(run)
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_document_of_too_many_containers_is_refused_unparsed() -> None:
    def run() -> None:
        with pytest.raises(MalformedBundle, match="arrays and objects"):
            load_json(MANY)

    assert _peak(run) < 2 * len(MANY)  # the text, not a million dicts (64 MB)


def test_brackets_inside_strings_do_not_count() -> None:
    text = '{"policy": "' + "[x]{y}" * MAX_JSON_CONTAINERS + '"}'
    assert load_json(text) == {"policy": "[x]{y}" * MAX_JSON_CONTAINERS}


def test_a_manifest_of_too_many_containers_is_a_failed_verdict(tmp_path: Path) -> None:
    w = witness()
    bundle = build(day_log(20), 3, 20, witnesses=[w])
    bundle.resign()
    bundle.files["manifest.json"] = MANY
    bundle.files["manifest.sig"] = bundle.key.sign(MANY)
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz", resign=False),
        bundle.key.pem,
        witness_keys=[w.verifier_key()],
        origin=ORIGIN,
    )
    assert not report.ok
    assert any("arrays and objects" in p for p in report.problems), report.problems


def test_the_lines_of_a_file_share_one_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each line alone is small; together they would build millions of objects.
    monkeypatch.setattr(bundle_module, "MAX_LINES_BRACKETS", 10_000)
    line = b'{"a": [' + b"{}," * 99 + b"{}]}\n"
    report = Report()
    rows = json_lines(line * 1000, "audit/heads.jsonl", report)
    assert len(rows) == 98  # 102 brackets a line
    assert report.problems == [
        "audit/heads.jsonl: more than the 10000 arrays and objects it can hold (line 99)"
    ]


def test_the_bound_leaves_room_for_a_busy_period() -> None:
    # About three brackets an audit entry's line (its payload's included), 1.5 million
    # entries at the member cap.
    assert MAX_LINES_BRACKETS >= 3 * 1_500_000
