"""The audit entries check 6c (`cofre_evidence_verifier.dual_control`) reads: the
period's entries and the records of ``keys/dual_control.json`` proven to be entries of
the log, and the ceremonies to check (each started in the period, and each an audit key
handover of the period belongs to).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from cofre_evidence_verifier.boundaries import ENTRY_TIME
from cofre_evidence_verifier.bundle import (
    Files,
    hash_list,
    integer,
    json_lines,
    json_object,
    load_json,
    string,
)
from cofre_evidence_verifier.errors import MalformedBundle, SignedRequestError
from cofre_evidence_verifier.keychain import MAX_HANDOVERS
from cofre_evidence_verifier.merkle import included, leaf_hash
from cofre_evidence_verifier.request_signature import SignedRequest

NAME: Final = "keys/dual_control.json"
PROPOSE: Final = "key.rotation.propose"
APPROVE: Final = "key.rotation.approve"
START: Final = "key.rotation.start"
HANDOVER: Final = "audit.key.handover"
CANCEL: Final = "key.rotation.cancel"


def audit_entry(payload: str) -> dict[str, Any]:
    """The audit entry `payload` as an object (empty when it is not one)."""
    try:
        return json_object(payload, "an audit entry")
    except ValueError:
        return {}


def entry_details(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry's ``details`` (empty when it has none)."""
    details = entry.get("details")
    return details if isinstance(details, dict) else {}


def entry_time(entry: dict[str, Any]) -> int | None:
    """The entry's time as a Unix second (None when it does not parse, or is not spelt
    as the vault spells every entry's time: session 40, an offset moved a start's
    instant hours before where its text sorts it)."""
    text = entry.get("time")
    if not isinstance(text, str) or ENTRY_TIME.fullmatch(text) is None:
        return None
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int(at.astimezone(UTC).timestamp())


def succeeded(entry: dict[str, Any], action: str) -> bool:
    """Whether `entry` is a successful `action`."""
    return entry.get("action") == action and entry.get("outcome") == "success"


# The leaf indexes of a pool's successful ceremony entries, ascending: by (action,
# ceremony id) and, under (action, None), all of that action.
Index = dict[tuple[str, str | None], list[int]]


def index_pool(pool: dict[int, dict[str, Any]]) -> Index:
    """The pool's successful proposals, approvals, starts and handovers, by action and
    ceremony id (`Index`). Made once: each ceremony's check scanned (and sorted) the
    whole pool, three times, so a hostile bundle of many starts cost their number times
    the pool's size (review 35: five thousand starts took 92 s, sixty thousand hours)."""
    out: Index = {}
    for index in sorted(pool):
        entry = pool[index]
        action = entry.get("action")
        if action not in (PROPOSE, APPROVE, START, HANDOVER, CANCEL):
            continue
        if entry.get("outcome") != "success":
            continue
        out.setdefault((str(action), None), []).append(index)
        ceremony = entry.get("key_id")
        if isinstance(ceremony, str):
            out.setdefault((str(action), ceremony), []).append(index)
    return out


# Starts by the digest of the signed proposal each ran (`proposal_runs`).
Runs = dict[str, list[int]]


def signed_proposal_digest(entry: dict[str, Any]) -> str | None:
    """`SignedRequest.proposal_digest` of the signed request a proposal `entry` carries
    (None when it carries none that parses)."""
    document = entry.get("document")
    if not isinstance(document, str):
        return None
    try:
        return SignedRequest.from_json(document).proposal_digest()
    except SignedRequestError:
        return None


def _first_proposal(
    pool: dict[int, dict[str, Any]],
    by: Index,
    ceremony: object,
    before: int,
    parsed: dict[int, str | None],
) -> str | None:
    """`signed_proposal_digest` of `ceremony`'s first proposal in the pool, when it was
    logged before entry `before`; each proposal parsed once (`parsed`, by its index):
    a hostile bundle's N starts or cancels of one ceremony parsed its 64 KiB document N
    times (review 48b)."""
    proposals = by.get((PROPOSE, str(ceremony)), [])
    if not proposals or proposals[0] >= before:
        return None
    first = proposals[0]
    if first not in parsed:
        parsed[first] = signed_proposal_digest(pool[first])
    return parsed[first]


def proposal_runs(pool: dict[int, dict[str, Any]], by: Index) -> Runs:
    """The pool's starts, ascending, by the digest of the signed proposal each ran: the
    one its start names (``details.proposal``, written by the vault since session 31c,
    unless the log's PAN mask hid part of it) and that of its ceremony's first proposal
    logged before it. One signed proposal starts one rotation: the vault refuses to run
    it under another id (atk48a: the verifier told ceremonies apart by id only)."""
    out: Runs = {}
    parsed: dict[int, str | None] = {}
    for index in by.get((START, None), []):
        entry = pool[index]
        digests: set[str] = set()
        named = entry_details(entry).get("proposal")
        if isinstance(named, str) and "*" not in named:
            digests.add(named)
        if (digest := _first_proposal(pool, by, entry.get("key_id"), index, parsed)) is not None:
            digests.add(digest)
        for digest in digests:
            out.setdefault(digest, []).append(index)
    return out


def proven_entries(
    files: Files, size: int, root: bytes, problems: list[str]
) -> dict[int, dict[str, Any]]:
    """The period's entries and the records of `NAME` proven to be entries of the log,
    by leaf index (each record that is not is a problem)."""
    period = {
        e["index"]: e["payload"]
        for e in json_lines(files.get("audit/entries.jsonl", b""))
        if isinstance(e.get("index"), int) and isinstance(e.get("payload"), str)
    }
    pool = {index: audit_entry(payload) for index, payload in period.items()}
    data = files.get(NAME)
    if data is None:
        return pool
    try:
        records = load_json(data)
    except ValueError as exc:
        problems.append(f"{NAME}: not a JSON list of audit entries: {exc}")
        return pool
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        problems.append(f"{NAME}: not a JSON list of audit entries")
        return pool
    for record in records:
        try:
            index = integer(record.get("index"), f"{NAME}: an index")
            payload = string(record.get("payload"), f"{NAME}: a payload")
            proof = hash_list(record.get("proof"), f"{NAME}: a proof")
        except MalformedBundle as exc:
            problems.append(str(exc))
            continue
        if not included(leaf_hash(payload.encode("utf-8")), index, size, proof, root):
            problems.append(
                f"{NAME}: entry {index} is not in the log (its inclusion proof in signed "
                f"head {size} fails; removed or altered entry)"
            )
        elif index in period and period[index] != payload:
            problems.append(f"{NAME}: entry {index} differs from audit/entries.jsonl")
        else:
            pool[index] = audit_entry(payload)
    return pool


def _masks(shown: str, ceremony_id: str) -> bool:
    """Whether `shown` is `ceremony_id` as the log's PAN mask may write it in a detail:
    same length, differing only where `shown` has an asterisk."""
    return len(shown) == len(ceremony_id) and all(
        a in {b, "*"} for a, b in zip(shown, ceremony_id, strict=True)
    )


def run_problem(
    pool: dict[int, dict[str, Any]], runs: Runs, ceremony_id: str, start: int, digest: str
) -> str | None:
    """Why the start at `start` of `ceremony_id`, whose proposal verified with `digest`
    (`SignedRequest.proposal_digest`), is not that signed proposal's one rotation; None
    when it is. A second start of the same id is `dual_control._check_start`'s."""
    named = entry_details(pool[start]).get("proposal")
    if isinstance(named, str) and not _masks(named, digest):
        return f"its start names another signed proposal ({named}) than its own ({digest})"
    # The first two starts of the proposal are enough (ascending; the ceremony's own
    # second start is `_check_start`'s): each of N copies of one proposal scanned all N
    # starts (review 48: 60,000 copies, three minutes).
    first_two = runs.get(digest, [])[:2]
    earlier = [i for i in first_two if i < start and pool[i].get("key_id") != ceremony_id]
    if not earlier:
        return None
    return (
        f"its proposal is the signed request that started ceremony "
        f"{pool[earlier[0]].get('key_id')} (entry {earlier[0]}), under another id: one "
        "signed proposal starts one rotation (the vault refuses a second run of it), so "
        "this one rests on its approvers alone"
    )


def cancels(pool: dict[int, dict[str, Any]], by: Index) -> dict[str, int]:
    """The first successful cancel in `pool` of each ceremony id and of each signed
    proposal (by the digest its ``details.proposal`` names unmasked, written by the vault
    since session 31c): ids are UUIDs, digests 64 hex digits, so one map holds both."""
    out: dict[str, int] = {}
    parsed: dict[int, str | None] = {}
    for index in by.get((CANCEL, None), []):
        entry = pool[index]
        ceremony = entry.get("key_id")
        # And the digest of that ceremony's first proposal logged before it (a cancel
        # written before session 31c names no proposal).
        proposal = _first_proposal(pool, by, ceremony, index, parsed)
        named = (ceremony, entry_details(entry).get("proposal"), proposal)
        for key in named:
            if isinstance(key, str) and "*" not in key:
                out.setdefault(key, index)
    return out


def cancel_problem(
    cancelled: dict[str, int], ceremony_id: str, start: int, digest: str
) -> str | None:
    """Why the start at `start` of `ceremony_id` (its proposal's digest `digest`) comes
    after a cancel of that ceremony or of another ceremony of its signed proposal: a
    cancelled proposal never starts (the vault refuses it since session 31; the
    verifier did not look, review 48). None when no such cancel precedes it."""
    found = [i for i in (cancelled.get(ceremony_id), cancelled.get(digest)) if i is not None]
    if not found or min(found) > start:
        return None
    return (
        f"its signed proposal was cancelled (entry {min(found)}) before it started: a "
        "cancelled ceremony never starts, under its id or another (the vault refuses it)"
    )


def _hands_over_to(start: dict[str, Any], new_key: str) -> bool:
    """Whether `start` is an audit rotation to the key `new_key` names."""
    details = entry_details(start)
    return details.get("kind") == "audit" and new_key == (
        f"cofre-audit-v{details.get('new_version')}"
    )


def handover_start(
    pool: dict[int, dict[str, Any]], by: Index, index: int
) -> tuple[int | None, str]:
    """The index of the start of the ceremony the audit key handover at `index` belongs
    to, or None with the reason (review 27 A2).

    The vault writes a handover's ``key.rotation.start`` and ``audit.key.handover`` in one
    transaction (`vault.audit_rotation`), the handover naming its ceremony in
    ``details.ceremony``. That id is what links them: the start must be one of it, an
    audit rotation to the version the handover hands over to, logged before it. A
    detail is written through the log's PAN mask, which hides a ceremony id whose
    groups make a run of card-length digits (``…-****-**70-12******9012``); then the
    start must match the shown id where it is not masked, be by the handover's officer,
    to the same version, and be logged within a second before the handover (the same
    transaction), and only one start may fit."""
    entry = pool[index]
    details = entry_details(entry)
    new_key, named = str(details.get("new_key")), details.get("ceremony")
    if isinstance(named, str) and "*" not in named:
        starts = by.get((START, named), [])
        if not starts:
            return None, f"no start of the ceremony it names ({named}) is in the bundle"
        first = starts[0]
        if first > index or not _hands_over_to(pool[first], new_key):
            return None, (
                f"the ceremony it names ({named}) started at entry {first} is not an audit "
                f"rotation to {new_key} logged before it"
            )
        return first, ""
    at = entry_time(entry)
    fits = [
        i
        for i in by.get((START, None), [])
        if i < index
        and _hands_over_to(e := pool[i], new_key)
        and e.get("actor") == entry.get("actor")
        and (not isinstance(named, str) or _masks(named, str(e.get("key_id"))))
        and at is not None
        and (started := entry_time(e)) is not None
        and 0 <= at - started <= 1
    ]
    if len(fits) != 1:
        shown = named if isinstance(named, str) else "no ceremony"
        return None, (
            f"it names {shown}, and {len(fits)} audit rotation starts to {new_key} by its "
            "officer were logged within the second before it (one is needed)"
        )
    return fits[0], ""


def ceremonies_to_check(
    pool: dict[int, dict[str, Any]], by: Index, period: set[int], problems: list[str]
) -> dict[str, int]:
    """The ceremonies to check, by id, with their start's index: each started in the
    period, and each an audit key handover of the period belongs to (`handover_start`;
    its start may be just before the period)."""
    out: dict[str, int] = {}
    handovers = 0
    for index in sorted(period):
        entry = pool.get(index, {})
        if succeeded(entry, START):
            # A second start of a ceremony (here or anywhere in the bundle) fails the
            # ceremony's own check (`dual_control._check_start`).
            out.setdefault(str(entry.get("key_id")), index)
        elif succeeded(entry, HANDOVER):
            handovers += 1
            if handovers > MAX_HANDOVERS:
                # A masked one is matched against every start before it: bounded, as
                # the key chain is (review 35).
                problems.append(
                    f"dual control: the period holds more than {MAX_HANDOVERS} audit key "
                    f"handover entries, more than a log's key chain may hold (entry {index} "
                    "and those after it are not checked)"
                )
                break
            start, why = handover_start(pool, by, index)
            if start is None:
                new_key = entry_details(entry).get("new_key")
                problems.append(
                    f"dual control: the audit key handover at entry {index} (to {new_key}) "
                    f"belongs to no key ceremony started in the bundle ({why}): its dual "
                    "control is not proven"
                )
            else:
                out.setdefault(str(pool[start].get("key_id")), start)
    return out


# How many second starts the report names one by one (a hostile bundle may hold many).
MAX_RESTARTS: Final = 20


def _entries(files: Files, records: bool) -> dict[int, dict[str, Any]]:
    """`files`' entries (and, when `records`, the records of `NAME`, which its own
    verification proved), by leaf index."""
    rows = json_lines(files.get("audit/entries.jsonl", b""))
    if records:
        try:
            listed = load_json(files.get(NAME, b"[]"))
        except ValueError:
            listed = []
        rows += [r for r in listed if isinstance(r, dict)] if isinstance(listed, list) else []
    return {
        int(r["index"]): audit_entry(r["payload"])
        for r in rows
        if type(r.get("index")) is int and isinstance(r.get("payload"), str)
    }


def _first_starts(by: Index, within: set[int] | None = None) -> dict[str, int]:
    """The first successful start of each ceremony (among the indexes `within`), by id."""
    return {
        str(ceremony): next(i for i in starts if within is None or i in within)
        for (action, ceremony), starts in by.items()
        if action == START
        and ceremony is not None
        and any(within is None or i in within for i in starts)
    }


def started_before(
    files: Files, previous: Files, earlier_bundles: Sequence[Files] = ()
) -> list[str]:
    """A problem for each ceremony started in `files`' period that the `previous`
    bundle (verified: its signature and listing), or one of the `earlier_bundles`
    chained before it (session 49), shows started already, in its period or in its
    records (session 40), or whose signed proposal started another ceremony there
    (atk48a: the same signed request under another id). The vault starts a ceremony
    once, in the transaction of the approval completing its quorum; a second start
    within the MFA window after that approval passed check 6c when the first one was
    the previous period's, just before its end: a rotation nobody approved, on the
    officers' approval of another."""
    before: dict[int, dict[str, Any]] = {}
    for older in reversed(earlier_bundles):  # oldest first: a newer bundle's copy of a row wins
        before.update(_entries(older, records=True))
    nearest = _entries(previous, records=True)
    before.update(nearest)

    def bundle(index: int) -> str:
        return "the previous bundle" if index in nearest else "an earlier bundle"

    before_by = index_pool(before)
    earlier, earlier_runs = _first_starts(before_by), proposal_runs(before, before_by)
    now = _entries(files, records=True)
    now_by = index_pool(now)
    ran: dict[int, int] = {}  # a start -> the previous bundle's first start of its proposal
    # A start -> the previous bundle's first cancel of its proposal (rev48b: the
    # exporter carries no cancel as a record, so a cancel of the previous period was
    # never read).
    earlier_cancels, withdrawn = cancels(before, before_by), dict[int, int]()
    for digest, starts in proposal_runs(now, now_by).items():
        if digest in earlier_runs:
            prior = earlier_runs[digest][0]
            for i in starts:
                ran[i] = min(ran.get(i, prior), prior)
        if digest in earlier_cancels:
            for i in starts:
                withdrawn[i] = min(
                    withdrawn.get(i, earlier_cancels[digest]), earlier_cancels[digest]
                )
    out = []
    for ceremony, index in sorted(
        _first_starts(now_by, set(_entries(files, records=False))).items(), key=_second
    ):
        if ceremony in earlier:
            out.append(
                f"dual control: ceremony {ceremony} started at entry {index} was already "
                f"started by entry {earlier[ceremony]} of {bundle(earlier[ceremony])}: a second "
                "rotation on one approval (the vault starts a ceremony once)"
            )
        elif (first := ran.get(index)) is not None:
            out.append(
                f"dual control: ceremony {ceremony} started at entry {index} runs the signed "
                f"proposal that started ceremony {before[first].get('key_id')} at entry "
                f"{first} of {bundle(first)}, under another id: one signed proposal "
                "starts one rotation (the vault refuses a second run of it)"
            )
        elif (
            cancel := min(
                (c for c in (earlier_cancels.get(ceremony), withdrawn.get(index)) if c is not None),
                default=None,
            )
        ) is not None:
            out.append(
                f"dual control: ceremony {ceremony} started at entry {index} after its signed "
                f"proposal was cancelled by entry {cancel} of {bundle(cancel)}: a "
                "cancelled ceremony never starts (the vault refuses it)"
            )
    if len(out) > MAX_RESTARTS:
        out[MAX_RESTARTS:] = [f"dual control: and {len(out) - MAX_RESTARTS} more second starts"]
    return out


def _second(pair: tuple[str, int]) -> int:
    return pair[1]
