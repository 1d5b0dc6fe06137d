"""Review of session 32 (finding F6, PCI DSS 10.2.1.6): the offline verifier said
nothing of a period's process starts and stops. It now names, without a verdict, each
start with no stop after it (an unclean stop, or a process still running at the
period's end) and each stop of a process that had already stopped with no start
between (no vault writes one), for the auditor to ask about."""

from __future__ import annotations

import json
from typing import Any

from cofre_evidence_verifier.lifecycle import MAX_LISTED, check_lifecycle
from cofre_evidence_verifier.report import Report


def _files(*entries: tuple[str, Any, Any]) -> dict[str, bytes]:
    """Entries of (action, host, pid), indexed from 10 (a period inside the log)."""
    lines = [
        json.dumps(
            {
                "index": 10 + i,
                "payload": json.dumps({"action": action, "details": {"host": host, "pid": pid}}),
            }
        )
        for i, (action, host, pid) in enumerate(entries)
    ]
    return {"audit/entries.jsonl": "\n".join(lines).encode()}


def _line(files: dict[str, bytes]) -> str:
    report = Report()
    check_lifecycle(files, report)
    assert report.ok is False  # no verdict: it passes no check
    assert report.problems == []
    [line] = report.checks
    return line


def test_starts_and_stops_that_pair_are_counted_and_nothing_is_named() -> None:
    line = _line(
        _files(
            ("process.stop", "a", 7),  # its start came before the period
            ("policy.load", "a", 7),
            ("policy.load", "b", 7),  # another host, the same pid
            ("tokenize", "a", 7),
            ("process.stop", "b", 7),
            ("process.stop", "a", 7),
        )
    )
    assert line == (
        "process lifecycle (no verdict): 2 starts naming host and pid, 3 graceful stops "
        "in the period"
    )


def test_a_start_with_no_stop_and_a_second_stop_are_named() -> None:
    line = _line(
        _files(
            ("policy.load", "a", 7),
            ("process.stop", "a", 7),
            ("process.stop", "a", 7),  # no vault writes this: a forged or copied stop
            ("policy.load", "b", 8),  # killed, or still running at the period's end
            ("policy.load", "a", 9),
        )
    )
    assert "3 starts naming host and pid, 2 graceful stops" in line
    assert "2 starts with no stop after them" in line
    assert "entry 13 (b pid 8), entry 14 (a pid 9)" in line
    assert "1 stops of a process already stopped" in line
    assert "entry 12 (a pid 7)" in line


def test_entries_before_session_32_and_hostile_lines_are_left_out() -> None:
    files = _files(
        ("policy.load", None, None),  # a start before session 32 names no process
        ("policy.load", "a", "7"),
        ("policy.load", "a", True),
        ("process.stop", ["a"], 7),
    )
    files["audit/entries.jsonl"] += b'\n{"index": 3, "payload": 5}\n{"index": "x"}\nnot json\n'
    files["audit/entries.jsonl"] += b'{"index": 3, "payload": null}\n'  # an index twice
    assert _line(files) == (
        "process lifecycle (no verdict): 0 starts naming host and pid, 0 graceful stops "
        "in the period"
    )


def test_a_long_list_is_bounded() -> None:
    line = _line(_files(*(("policy.load", "h" * 200, pid) for pid in range(MAX_LISTED + 5))))
    assert line.endswith(" and 5 more")
    assert "h" * 65 not in line
