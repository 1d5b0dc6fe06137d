"""Check 6e: no token answers after the log shows it deleted (sessions 38, 39).

A delete (`delete`) or the purge (`purge`: an expired token, or one a convergent
tokenize replaced) crypto-shreds the token's row: its ciphertext, nonce and fingerprint
are erased and its id is never live again (a tokenize of the same card makes a new
token id; a retry of the tokenize that made it is answered `410 token_deleted`). A
writer of the vault's database who holds no HSM PIN can put the row's old card columns
back from a backup while the data key it was sealed under is still live, and the card
opens again (docs/threat-model.md, "A deleted token restored from a backup"): the
vault does not read the log on every reveal to refuse it. The log records it, though:
every answer from a row names its token id, and a successful entry naming an id after
the entry that deleted it is none of the vault's doing. This check fails the bundle,
naming the token id, the entry that shredded it and the one that answered.

What answers: every successful entry naming the token other than a delete or purge
(session 39; session 38 counted `detokenize`, `detokenize_masked`, `metadata` and
`relay.send` only, and a written-back row answered unseen to a `token.update`, a
convergent `tokenize` or a `capture` that found its fingerprint, and held a
`security_code.hold`), a `lookup` among them (session 40: a lookup writes one entry
per token it answers, naming its id; before, its one entry named none, and a
written-back row found by its card answered unseen here). A refused or failed entry
(`410 token_deleted`, an integrity error) is the vault holding and is not counted.

Earlier periods (session 39): the bundle lists every token deleted before its period
(`audit/deleted_tokens.txt`: the vault's tombstones at export, one token id a line,
sorted, ids only so that millions of purged tokens stay a file of ~37 bytes each). A
listed token answering anywhere in the period fails. Alone, the list is the exporter's
word: it cannot add a failure that is not one (a listed token was deleted, by the
vault's own signed claim), but it can leave one out, and a written-back row has lost
its tombstone, so the exporter leaves it out by itself. With the previous bundle
(`--previous`), the list must hold every token the previous bundle lists and every one
its entries deleted (each missing one fails, named with its entry), and those count
for this period whatever the list says: the chain carries every deletion forward.
"""

from __future__ import annotations

from typing import Final

from cofre_evidence_verifier.bundle import Files, entry_object, json_lines, member_lines
from cofre_evidence_verifier.report import Report

NAME: Final = "deleted_tokens"
LISTED: Final = "audit/deleted_tokens.txt"
SHREDS: Final = frozenset({"delete", "purge"})
SUCCESS: Final = "success"
# How many problems of each kind the report names one by one (a hostile bundle may
# hold a million).
MAX_LISTED: Final = 20
# A token id as the vault writes one (a UUID); a line longer than an audit identifier
# is not one.
_MAX_ID: Final = 128

# Where a token was deleted before the entry that answers: its leaf index (or None when
# only a list says so) and how the report describes it.
Deleted = dict[str, tuple[int | None, str]]


def _entry(payload: object) -> tuple[str, str] | None:
    """(action, token id) of a successful entry naming a token, else None."""
    entry = entry_object(payload)
    if entry is None:
        return None
    action, token_id = entry.get("action"), entry.get("token_id")
    if entry.get("outcome") != SUCCESS or not isinstance(token_id, str) or not token_id:
        return None
    return str(action), token_id


def _entries(files: Files) -> list[tuple[int, str, str]]:
    """(leaf index, action, token id) of the bundle's successful entries naming a token,
    in leaf order."""
    lines = json_lines(files.get("audit/entries.jsonl", b""))
    out = []
    for line in lines:
        index = line.get("index")
        found = _entry(line.get("payload"))
        if type(index) is int and found is not None:
            out.append((index, *found))
    out.sort()
    return out


def shredded_in(files: Files) -> Deleted:
    """The first entry of the bundle that deleted or purged each token id."""
    out: Deleted = {}
    for index, action, token_id in _entries(files):
        if action in SHREDS:
            out.setdefault(token_id, (index, f"entry {index} ({action})"))
    return out


def listed_in(files: Files, report: Report, whose: str) -> set[str]:
    """The token ids of the bundle's `LISTED` file (none when it has none: a bundle of an
    exporter before session 39); a line that is not a token id, or out of order, fails
    `report` (naming `whose` list), and the ids after it are not read. Read a line at a
    time (session 40: split whole first, a member of short lines was millions of
    objects before its second line was found out of order)."""
    out: set[str] = set()
    previous = ""
    for number, raw in enumerate(member_lines(files.get(LISTED, b"")), 1):
        if not raw:
            continue
        line = raw.decode("utf-8", "replace")
        if len(line) > _MAX_ID or line != line.strip() or line <= previous:
            report.fail(
                f"deleted tokens: {whose}{LISTED} line {number} is not a token id in "
                "ascending order (one id a line, sorted, none twice)"
            )
            return out
        out.add(line)
        previous = line
    return out


def check_deleted_tokens(files: Files, report: Report, previous: Files | None = None) -> None:
    """Fail `report` for each successful entry naming a token id after an entry of the
    period that deleted it, or anywhere in the period when it was deleted before (the
    bundle's list, and with the `previous` bundle its list and its deletions); with the
    previous bundle, fail for each of its deletions this bundle's list leaves out. Else
    pass, counting the deletes."""
    listed = listed_in(files, report, "")
    before: Deleted = dict.fromkeys(
        listed, (None, f"the bundle's {LISTED} lists as deleted before the period")
    )
    omitted: list[str] = []
    if previous is not None:
        carried: Deleted = dict.fromkeys(
            listed_in(previous, report, "the previous bundle's "),
            (None, f"the previous bundle's {LISTED} lists as deleted before its period"),
        )
        for token_id, (index, how) in shredded_in(previous).items():
            carried[token_id] = (index, f"{how} of the previous bundle")
        for token_id, (_, how) in sorted(carried.items()):
            if token_id not in listed:
                omitted.append(
                    f"deleted tokens: token {token_id[:_MAX_ID]}, deleted by {how}, is missing "
                    f"from this bundle's {LISTED}: its tombstone is gone from the database "
                    "(a row put back from a backup) or the exporter left it out"
                )
        before.update(carried)
    answered = _answered(files, before)
    for problem in (omitted + answered)[:MAX_LISTED]:
        report.fail(problem)
    if len(omitted) + len(answered) > MAX_LISTED:
        report.fail(
            f"deleted tokens: and {len(omitted) + len(answered) - MAX_LISTED} more problems "
            "with deleted tokens"
        )
    if not omitted and not answered:
        proven = "proven by the previous bundle" if previous is not None else "not proven"
        report.passed(
            NAME,
            f"deleted tokens: {len(shredded_in(files))} tokens deleted or purged in the "
            f"period, {len(before)} before it ({LISTED}, {proven}: verify with --previous), "
            "none answered after it",
        )


def _answered(files: Files, before: Deleted) -> list[str]:
    """A line for each successful entry of `files` naming a token deleted `before` the
    period or by an earlier entry of it."""
    deleted = dict(before)
    out = []
    for index, action, token_id in _entries(files):
        if action in SHREDS:
            deleted.setdefault(token_id, (index, f"entry {index} ({action})"))
        elif token_id in deleted:
            where = deleted[token_id][1]
            shown = f"which {where} shredded" if where.startswith("entry") else f"which {where}"
            out.append(
                f"deleted tokens: entry {index} ({action}, success) reveals token "
                f"{token_id[:_MAX_ID]}, {shown}: a deleted token's card answered again, its "
                "row put back from a backup (docs/threat-model.md, 'A deleted token "
                "restored from a backup'); ask how, and treat the card as exposed"
            )
    return out
