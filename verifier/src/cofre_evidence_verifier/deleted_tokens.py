"""Check 6e: no token answers a reveal after the log shows it deleted (session 38).

A delete (`delete`) or the purge (`purge`: an expired token, or one a convergent
tokenize replaced) crypto-shreds the token's row: its ciphertext, nonce and fingerprint
are erased and its id is never live again (a tokenize of the same card makes a new
token id; a retry of the tokenize that made it is answered `410 token_deleted`). A
writer of the vault's database who holds no HSM PIN can put the row's old card columns
back from a backup while the data key it was sealed under is still live, and the card
opens again (docs/threat-model.md, "A deleted token restored from a backup"): the
vault does not read the log on every reveal to refuse it. The log records it, though:
every reveal names the token id, and a successful reveal of an id the period's log
deleted earlier is none of the vault's doing. This check fails the bundle, naming the
token id, the entry that shredded it and the reveal's.

A reveal is a successful `detokenize` (full), `detokenize_masked`, `metadata` (it
answers from the row) or `relay.send` naming the token (the relay put its card into an
acquirer's request). A refused or failed reveal (`410 token_deleted`, an integrity
error) is the vault holding and is not counted. A `lookup` entry names no token.
Bounds: only the bundle's own entries are compared (a delete in an earlier period and
a reveal in this one are in two bundles: verify the earlier bundle's deleted ids with
`--previous` by hand, or export a period holding both).
"""

from __future__ import annotations

from typing import Final

from cofre_evidence_verifier.bundle import Files, entry_object, json_lines
from cofre_evidence_verifier.report import Report

NAME: Final = "deleted_tokens"
SHREDS: Final = frozenset({"delete", "purge"})
REVEALS: Final = frozenset({"detokenize", "detokenize_masked", "metadata", "relay.send"})
SUCCESS: Final = "success"
# How many revivals the report names one by one (a hostile bundle may hold a million).
MAX_LISTED: Final = 20


def _entry(payload: object) -> tuple[str, str] | None:
    """(action, token id) of a successful entry naming a token, else None."""
    entry = entry_object(payload)
    if entry is None:
        return None
    action, token_id = entry.get("action"), entry.get("token_id")
    if entry.get("outcome") != SUCCESS or not isinstance(token_id, str) or not token_id:
        return None
    if action not in SHREDS and action not in REVEALS:
        return None
    return str(action), token_id


def check_deleted_tokens(files: Files, report: Report) -> None:
    """Fail `report` for each successful reveal of a token id after an entry of the
    period that deleted it, naming both leaf indices; else pass, counting the deletes."""
    lines = json_lines(files.get("audit/entries.jsonl", b""))
    indexed = sorted(
        (line["index"], line.get("payload")) for line in lines if type(line.get("index")) is int
    )
    shredded: dict[str, tuple[int, str]] = {}
    revived: list[tuple[int, str, str, int, str]] = []
    for index, payload in indexed:
        found = _entry(payload)
        if found is None:
            continue
        action, token_id = found
        if action in SHREDS:
            shredded.setdefault(token_id, (index, action))
        elif token_id in shredded:
            deleted_at, how = shredded[token_id]
            revived.append((index, action, token_id, deleted_at, how))
    for index, action, token_id, deleted_at, how in revived[:MAX_LISTED]:
        report.fail(
            f"deleted tokens: entry {index} ({action}, success) reveals token {token_id[:128]}, "
            f"which entry {deleted_at} ({how}) shredded: a deleted token's card answered "
            "again, its row put back from a backup (docs/threat-model.md, 'A deleted token "
            "restored from a backup'); ask how, and treat the card as exposed"
        )
    if len(revived) > MAX_LISTED:
        report.fail(
            f"deleted tokens: and {len(revived) - MAX_LISTED} more reveals of deleted tokens"
        )
    if not revived:
        report.passed(
            NAME,
            f"deleted tokens: {len(shredded)} tokens deleted or purged in the period, none "
            "revealed after it",
        )
