"""Check 7 back past the previous bundle (session 49, ``--earlier``).

A signed proposal counts for its whole life (``keys.proposal_ttl_hours``, up to 168 h,
plus the MFA window), and nothing ties a bundle's period to that life: with hourly or
daily bundles, the officers' genuine start of a proposal may lie two or more bundles
back, and a copy of it under another id (rev48), started on one officer's approval,
showed as dual-controlled when only the previous bundle was at hand. So:

- the bundles before the previous one, which the auditor verified as each came, can be
  given too, newest first (`check_earlier`): each is read as the previous one is (its
  manifest's signature by a key of this bundle's key chain, its files as its manifest
  lists them) and linked to the bundle after it, which names its covering head as its
  previous head, proves it a prefix of its own covering head, and starts where it
  ended; check 6c then looks for an earlier start or cancel of each signed proposal in
  all of them (`dual_control_log.started_before`);
- a ceremony of this bundle whose signed proposal was made before the oldest period at
  hand fails as not proven (`lookback_problems`): whether it started a rotation before
  is in a bundle the verifier was not given. The report names how far back to go.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cofre_evidence_verifier import chain
from cofre_evidence_verifier.bundle import Files, base64_bytes, json_object
from cofre_evidence_verifier.dual_control import WINDOW_SECONDS
from cofre_evidence_verifier.report import Report

Read = tuple[Files, dict[str, Any]]


def check_earlier(
    previous: Read, earlier: Sequence[Path], *, public_keys: Sequence[bytes], report: Report
) -> list[Read]:
    """The `earlier` bundles (newest first) that link, each to the bundle after it (the
    first to `previous`, the previous bundle's files and manifest), up to the first that
    does not, which is reported; ``earlier`` passes when all of them link."""
    newer_files, newer = previous
    out: list[Read] = []
    for number, path in enumerate(earlier, 1):
        label = f"earlier bundle {number} ({path.name})"
        read = chain.read_signed(path, public_keys, report, label)
        if read is None:
            return out
        problem = _link_problem(newer_files, newer, read[1])
        if problem is not None:
            report.fail(f"{label}: {problem}")
            return out
        out.append(read)
        newer_files, newer = read
    report.passed(
        "earlier",
        f"{len(out)} earlier bundle{'' if len(out) == 1 else 's'} chained before the previous "
        f"one, back to {newer['period']['from']}",
    )
    return out


def _link_problem(
    newer_files: Files, newer: dict[str, Any], manifest: dict[str, Any]
) -> str | None:
    """Why the bundle of `manifest` is not the one just before the bundle of `newer`
    (its manifest) and `newer_files`; None when it is."""
    linked = Report()
    chain.check_chain(manifest, newer, linked)
    if linked.problems:
        return "; ".join(linked.problems)
    old = manifest["covering_head"]
    if newer.get("previous_head") != old:
        return "the bundle after it names another previous head than its covering head"
    data = newer_files.get(chain.CONSISTENCY)
    if data is None:
        return f"the bundle after it holds no consistency proof ({chain.CONSISTENCY})"
    proof = json_object(data, chain.CONSISTENCY)
    size1 = old["tree_size"]
    if proof.get("size1") != size1:
        return (
            f"the bundle after it proves consistency from size {proof.get('size1')}, "
            f"but this one ends at {size1}"
        )
    root1 = base64_bytes(old["root_hash"], "covering_head.root_hash")
    head = newer["covering_head"]
    problem = chain.consistency_problem(proof, size1, root1, head["tree_size"], head)
    if problem is not None:
        return f"the log after it is not an extension of it ({problem})"
    return None


def _unix(text: object) -> int | None:
    """An ISO 8601 time (``Z`` or an offset) as a Unix second; None when it is not one."""
    if not isinstance(text, str):
        return None
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if at.tzinfo is None:
        return None
    return int(at.astimezone(UTC).timestamp())


def lookback_problems(ceremonies: object, since: object, *, starts_log: bool = False) -> list[str]:
    """A problem for each ceremony checked in this bundle (check 6c's summary,
    `ceremonies`) whose verified proposal was signed before `since`, the start of the
    oldest period at hand, or less than `WINDOW_SECONDS` after it: an earlier start of
    that signed proposal, under another id, would be in a bundle not given. Review 49:
    check 6c passes a start logged up to the window before its proposal's ``created``
    (the officer's token and the vault keep their own clocks), so a genuine start in
    the bundle before, logged just before its end, had a proposal signed just after
    it, and the copy verified. None when the oldest bundle at hand starts the log
    (`starts_log`): there is no bundle before it to give. A `since` that is no time
    fails every ceremony (closed)."""
    if starts_log or not isinstance(ceremonies, list):
        return []
    start = _unix(since)
    out = []
    for ceremony in ceremonies:
        if not isinstance(ceremony, dict):
            continue
        signed = _unix(ceremony.get("proposal_signed_at"))
        if signed is not None and (start is None or signed - WINDOW_SECONDS < start):
            when = (
                "before"
                if start is None or signed < start
                else f"within the {WINDOW_SECONDS} s window check 6c allows a start after"
            )
            out.append(
                f"dual control: ceremony {ceremony.get('ceremony')} (started at entry "
                f"{ceremony.get('start_entry')}): its proposal was signed at "
                f"{ceremony.get('proposal_signed_at')}, {when} the oldest bundle at hand "
                f"begins ({since}): whether that signed proposal already started another "
                "rotation is not proven; verify with the bundles back to its signing "
                "(--previous, then --earlier, newest first)"
            )
    return out
