"""The period's process starts and stops (PCI DSS 10.2.1.6, finding F6 of the vault's
docs/pci-tokenization.md): each serving process's `policy.load` names its host and pid,
and its graceful stop is a `process.stop` naming the same.

No verdict, and not a required check: a start with no stop after it in the period is
an unclean stop (killed, crashed, its node lost) or a process still running at the
period's end, and only the entity can say which. A stop of a process that had already
stopped in the period, with no start of it between, is none of a vault's doing (one
stop per start) and was written by something else. The report lists both for the
auditor to ask about (review of session 32: the verifier said nothing of either).
Entries written before session 32 name no host or pid and are not counted.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from cofre_evidence_verifier.bundle import Files, entry_object, json_lines
from cofre_evidence_verifier.report import Report

START: Final = "policy.load"
STOP: Final = "process.stop"
# How many of each kind the report line names (a hostile bundle may hold a million).
MAX_LISTED: Final = 20

_Process = tuple[str, int]


def _process(payload: object) -> tuple[str, _Process] | None:
    """(action, (host, pid)) of a start or stop entry that names its process."""
    entry = entry_object(payload)
    if entry is None:
        return None
    action, details = entry.get("action"), entry.get("details")
    if action not in (START, STOP) or not isinstance(details, dict):
        return None
    host, pid = details.get("host"), details.get("pid")
    if not isinstance(host, str) or type(pid) is not int:
        return None
    return str(action), (host[:64], pid)


def _first(pair: tuple[int, object]) -> int:
    return pair[0]


def _named(found: list[tuple[int, _Process]]) -> str:
    listed = ", ".join(f"entry {i} ({host} pid {pid})" for i, (host, pid) in found[:MAX_LISTED])
    return listed + (f" and {len(found) - MAX_LISTED} more" if len(found) > MAX_LISTED else "")


def check_lifecycle(files: Files, report: Report) -> None:
    """Add one line to `report` counting the period's starts and graceful stops, naming
    each start with no stop after it and each stop with no start before it that the
    period shows (a stop whose start came before the period is neither)."""
    lines = json_lines(files.get("audit/entries.jsonl", b""))
    # The starts not stopped yet, oldest first: a deque, as a list's pop(0) moved every
    # start left for each stop (review 35: a million starts of one process, then as
    # many stops, took minutes).
    running: dict[_Process, deque[int]] = {}
    seen: set[_Process] = set()
    starts = stops = 0
    unpaired: list[tuple[int, _Process]] = []
    indexed = [(line.get("index"), line.get("payload")) for line in lines]
    for index, payload in sorted(((i, p) for i, p in indexed if type(i) is int), key=_first):
        found = _process(payload)
        if found is None:
            continue
        action, process = found
        if action == START:
            starts += 1
            running.setdefault(process, deque()).append(index)
        else:
            stops += 1
            if running.get(process):
                running[process].popleft()
            elif process in seen:
                unpaired.append((index, process))
        seen.add(process)
    unstopped = sorted((i, process) for process, left in running.items() for i in left)
    message = (
        f"process lifecycle (no verdict): {starts} starts naming host and pid, {stops} "
        "graceful stops in the period"
    )
    if unstopped:
        message += (
            f"; {len(unstopped)} starts with no stop after them (an unclean stop, or "
            f"still running at the period's end: ask the entity): {_named(unstopped)}"
        )
    if unpaired:
        message += (
            f"; {len(unpaired)} stops of a process already stopped, with no start "
            f"between (a vault writes one stop per start: ask how): {_named(unpaired)}"
        )
    report.checks.append(message)
