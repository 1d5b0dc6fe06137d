"""Check 4b: no entry of the period is left out at either end of the bundle's range.

The entries check verifies the entries the bundle carries, leaves [first_index,
end_index), against the covering head; the leaves before and after are in the tree only
as subtree hashes. A bundle that claimed a later first index or an earlier end would
leave entries of its period out unseen, and one of no entries would hide a whole day
(review 29). So the bundle carries the entries just outside its range
(`audit/boundaries.jsonl`), each with its inclusion proof in the covering head: the one
before the first, dated before the period (none when the range starts the log), and the
one after the last, dated at or after the period's end. The exporter ends every period
at the latest with its own ``evidence.cutoff`` entry, so there always is one after.

Entry times follow leaf order, as the entries check already assumes (an entry of the
range dated outside the period fails there).

Times are compared as text, which orders them only in the one spelling the vault
writes (UTC, microseconds, ``Z``): the period must be spelt so, and start before it
ends (review 30: ``…T09:00:00-01:00`` names the instant of ``…T10:00:00Z`` but sorts
before it, and an end that sorts before the start let an empty range pass).
"""

from __future__ import annotations

import base64
import re
from typing import Any, Final

from cofre_evidence_verifier.bundle import (
    Files,
    Heads,
    hash_list,
    json_lines,
    json_object,
    string,
)
from cofre_evidence_verifier.errors import MalformedBundle
from cofre_evidence_verifier.merkle import included, leaf_hash
from cofre_evidence_verifier.report import Report

BOUNDARIES: Final = "audit/boundaries.jsonl"
# The spelling of every time the vault writes (`compliance.export._entry_time`). ASCII
# digits only: a str pattern's \d takes any Unicode digit, and times are compared as
# text, so an Arabic-Indic zero (sorting after "9") moved a period's start by hours
# while it read the same (review 35).
ENTRY_TIME: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")


def _whole(value: object) -> int | None:
    """`value` if it is an integer (not a bool, not a float), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_boundaries(files: Files, manifest: dict[str, Any], heads: Heads, report: Report) -> None:
    """Pass `boundaries` when the entries on both sides of the range are in the covering
    head and dated outside the period, on the right side of it."""
    claimed, period = manifest.get("entries"), manifest.get("period")
    covering = manifest.get("covering_head")
    if not (isinstance(claimed, dict) and isinstance(period, dict) and isinstance(covering, dict)):
        report.fail("manifest.json: no entries, period or covering head to check the ends by")
        return
    start, end = _whole(claimed.get("first_index")), _whole(claimed.get("end_index"))
    size = _whole(covering.get("tree_size"))
    since, until = period.get("from"), period.get("to")
    if start is None or end is None or size is None:
        report.fail("manifest.json: the entry range or covering head size is not an integer")
        return
    if not (_is_time(since) and _is_time(until) and str(since) < str(until)):
        report.fail(
            f"manifest.json: the period {since!r} to {until!r} is not two UTC times "
            "(YYYY-MM-DDTHH:MM:SS.ffffffZ) in order"
        )
        return
    head = heads.get(size)
    if head is None:
        report.fail(f"{BOUNDARIES}: the covering head {size} is not a verified head")
        return
    root = base64.b64decode(head["root_hash"])
    rows = {
        index: row
        for row in json_lines(files.get(BOUNDARIES, b""), BOUNDARIES, report)
        if (index := _whole(row.get("index"))) is not None
    }
    problems = []
    if start > 0:
        problems += _outside(rows.get(start - 1), start - 1, size, root, before=str(since))
    problems += _outside(rows.get(end), end, size, root, after=str(until))
    for problem in problems:
        report.fail(f"{BOUNDARIES}: {problem}")
    if not problems:
        shown = "the log's first entry" if start == 0 else f"entry {start - 1} before it"
        report.passed(
            "boundaries",
            f"nothing of the period is left out: {shown} and entry {end} after it are in "
            f"signed head {size}, dated outside the period",
        )


def _outside(
    row: dict[str, Any] | None,
    index: int,
    size: int,
    root: bytes,
    *,
    before: str | None = None,
    after: str | None = None,
) -> list[str]:
    """What is wrong with the boundary entry `row` at `index`: it must be in the tree
    and dated before `before` (or at or after `after`)."""
    side = "before" if before is not None else "after"
    if row is None or not 0 <= index < size:
        return [
            f"no entry {index} {side} the range with its proof: entries of the period could "
            f"be left out {side} it"
        ]
    payload = row.get("payload")
    try:
        proof = hash_list(row.get("proof"), f"entry {index}: its proof")
        entry = json_object(string(payload, f"entry {index}: its payload"), f"entry {index}")
    except MalformedBundle as exc:
        return [str(exc)]
    if not included(leaf_hash(str(payload).encode("utf-8")), index, size, proof, root):
        return [f"the inclusion proof of entry {index} fails"]
    at = entry.get("time")
    if not _is_time(at):
        return [f"entry {index} has no time in the vault's spelling"]
    at = str(at)
    inside = (before is not None and not at < before) or (after is not None and not at >= after)
    return [f"entry {index} {side} the range is dated {at}, inside the period"] if inside else []


def _is_time(value: object) -> bool:
    return isinstance(value, str) and ENTRY_TIME.fullmatch(value) is not None
