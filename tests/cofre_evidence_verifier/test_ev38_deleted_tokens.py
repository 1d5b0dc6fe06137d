"""Check 6e (`cofre_evidence_verifier.deleted_tokens`) on synthetic bundles: a
successful reveal of a token id after the entry that deleted or purged it fails the
bundle, naming both entries; a refused reveal, a reveal before the delete, another
token's reveal and a delete with no reveal after it do not. The end-to-end attack with
a real vault, database writer and exporter is
tests/compliance/test_ev38_deleted_token_revealed.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cofre_evidence_verifier.deleted_tokens import MAX_LISTED, check_deleted_tokens
from cofre_evidence_verifier.report import Report
from tests.support.evidence_bundles import day_log, payload, verify_log

DAY = "2026-03-01"
TOKEN_ID = "0b5e1c9e-4f0d-4a51-9a64-6a1d1bd0c0de"
OTHER_ID = "7d2f3c1a-0e4b-4c8e-8b1d-2f6a9e3c5b7a"


def _entry(action: str, second: int, token_id: str = TOKEN_ID, outcome: str = "success") -> str:
    return payload(
        action,
        f"{DAY}T10:00:{second:02d}.000000Z",
        token_id=token_id,
        outcome=outcome,
        details={"reveal": "full"} if action.startswith("detokenize") else {},
    )


def _deleted_tokens_problems(report: Report) -> list[str]:
    return [p for p in report.problems if p.startswith("deleted tokens:")]


@pytest.mark.parametrize("shred", ["delete", "purge"])
@pytest.mark.parametrize("reveal", ["detokenize", "detokenize_masked", "metadata", "relay.send"])
def test_a_reveal_after_the_delete_fails_naming_both_entries(
    tmp_path: Path, shred: str, reveal: str
) -> None:
    log = day_log(10, DAY)
    log += [_entry("detokenize", 1), _entry(shred, 2), _entry(reveal, 3)]
    report = verify_log(log, 0, tmp_path)
    assert not report.ok
    [line] = _deleted_tokens_problems(report)
    assert line.startswith(
        f"deleted tokens: entry 12 ({reveal}, success) reveals token {TOKEN_ID}, which "
        f"entry 11 ({shred}) shredded"
    ), line
    assert "deleted_tokens" not in report.passed_checks
    assert report.problems == [line], report.problems


@pytest.mark.parametrize("outcome", ["denied", "failed"])
def test_a_refused_reveal_after_the_delete_verifies(tmp_path: Path, outcome: str) -> None:
    log = day_log(10, DAY)
    log += [_entry("delete", 1), _entry("detokenize", 2, outcome=outcome)]
    log += [_entry("delete", 3)]  # deleted again: "already deleted", no reveal
    report = verify_log(log, 0, tmp_path)
    assert report.ok, report.problems
    [line] = [c for c in report.checks if c.startswith("deleted tokens:")]
    assert line.startswith("deleted tokens: 1 tokens deleted or purged in the period, 0 before it")
    assert line.endswith("none answered after it")


def test_another_token_and_a_reveal_before_the_delete_verify(tmp_path: Path) -> None:
    log = day_log(10, DAY)
    log += [_entry("relay.send", 1), _entry("delete", 2), _entry("detokenize", 3, OTHER_ID)]
    # Session 39: a tokenize answering the deleted id is its row answering (a convergent
    # tokenize found its written-back fingerprint): another token's tokenize here.
    log += [_entry("tokenize", 4, OTHER_ID), _entry("lookup", 5, token_id="")]
    report = verify_log(log, 0, tmp_path)
    assert report.ok, report.problems
    assert "deleted_tokens" in report.passed_checks


def test_a_period_with_no_delete_passes_the_check(tmp_path: Path) -> None:
    report = verify_log(day_log(10, DAY), 0, tmp_path)
    assert report.ok, report.problems
    assert "deleted tokens: 0 tokens deleted or purged in the period" in "\n".join(report.checks)


def test_many_reveals_are_named_within_a_bound() -> None:
    """A hostile bundle of a million revivals makes a bounded report."""
    lines = [_entry("delete", 0)] + [_entry("detokenize", 1)] * (MAX_LISTED + 5)
    entries = "".join(
        f'{{"index": {i}, "payload": {payload_json}}}\n'
        for i, payload_json in enumerate(map(_quoted, lines))
    )
    report = Report()
    check_deleted_tokens({"audit/entries.jsonl": entries.encode()}, report)
    assert len(report.problems) == MAX_LISTED + 1
    assert report.problems[-1] == "deleted tokens: and 5 more problems with deleted tokens"
    assert "deleted_tokens" not in report.passed_checks


def test_hostile_entries_are_not_counted() -> None:
    """Entries the entries check fails (no index, a payload not JSON, not an object, a
    token id not a string) reach no verdict here and raise nothing."""
    data = (
        '{"payload": "x"}\n{"index": 0, "payload": "not json"}\n'
        '{"index": 1, "payload": "[1]"}\n'
        + f'{{"index": 2, "payload": {_quoted(_entry("delete", 0, token_id=""))}}}\n'
        + '{"index": 3, "payload": 7}\n'
    )
    report = Report()
    check_deleted_tokens({"audit/entries.jsonl": data.encode()}, report)
    assert report.problems == []
    assert "deleted_tokens" in report.passed_checks


def _quoted(text: str) -> str:
    return json.dumps(text)
