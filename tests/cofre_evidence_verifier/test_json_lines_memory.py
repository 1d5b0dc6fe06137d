"""A JSON-lines member is read line by line, within the bound of lines it may hold.

`json_lines` stopped parsing after `most` lines (review 31), but split the whole member
into a list of lines first (`str.splitlines`): a member at the 512 MiB cap of two-byte
lines (``ab\\n``, compressing about a thousandfold, so a bundle of a few hundred KB)
became some 180 million string objects, about 10 GB, before the bound was looked at.
`audit/handovers.jsonl` is read that way before the manifest's signature is checked, so
any file handed to the auditor could exhaust their machine.
"""

from __future__ import annotations

import tracemalloc

from cofre_evidence_verifier.bundle import json_lines
from cofre_evidence_verifier.report import Report


def test_lines_past_the_bound_are_never_held() -> None:
    data = b"ab\n" * 1_000_000  # 3 MB: a million lines
    report = Report()
    tracemalloc.start()
    try:
        rows = json_lines(data, "audit/handovers.jsonl", report, most=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == []
    assert any("more than the 10 lines" in p for p in report.problems), report.problems
    # Held: a few lines, not a million strings (over 50 MB of them).
    assert peak < len(data), peak


def test_one_astral_character_does_not_widen_the_whole_member() -> None:
    # Decoding a whole member to one str stores every character in 4 bytes once a
    # single one is outside the BMP: 4x the member's size at once.
    data = b"{}\n" * 1_000_000 + "\U0001f600".encode()
    tracemalloc.start()
    try:
        json_lines(data, "x.jsonl", Report(), most=5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < len(data), peak


def test_lines_are_split_at_newlines_only() -> None:
    # U+2028 and CR are no line breaks of JSON lines: a raw U+2028 inside a string is
    # valid JSON, and CR before the newline is whitespace.
    data = '{"a": "x\u2028y"}\r\n{"b": 1}\n\n'.encode()
    report = Report()
    assert json_lines(data, "x.jsonl", report) == [{"a": "x\u2028y"}, {"b": 1}]
    assert report.problems == []


def test_a_line_that_is_not_utf8_is_named() -> None:
    report = Report()
    assert json_lines(b'{"a": 1}\n{"b": "\xff"}\n', "x.jsonl", report) == [{"a": 1}]
    assert report.problems == ["x.jsonl: line 2 is not a JSON object"], report.problems
