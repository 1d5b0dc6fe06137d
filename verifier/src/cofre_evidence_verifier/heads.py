"""Check 3: every signed tree head in `audit/heads.jsonl` verifies with the audit key in
force at its size (`keychain`: the pinned key, or the key a handover in
`audit/handovers.jsonl` introduced), and its checkpoint text states its own size and
root."""

from __future__ import annotations

import base64

from cofre_evidence_verifier.bundle import Files, Heads, json_lines, signature_verifies
from cofre_evidence_verifier.errors import NoteError
from cofre_evidence_verifier.keychain import KeyChain
from cofre_evidence_verifier.report import Report

HANDOVERS = "audit/handovers.jsonl"


def read_chain(files: Files, public_key_pem: bytes, report: Report) -> KeyChain:
    """Return the audit key chain from the bundle's handovers anchored at the pinned key.
    When they do not make one, that is reported (the bundle fails) and the chain of the
    pinned key alone is returned, so the other checks still report what they find."""
    notes = [str(line["note"]) for line in json_lines(files.get(HANDOVERS, b""), HANDOVERS, report)]
    try:
        chain = KeyChain.build([public_key_pem], notes)
    except NoteError as exc:
        report.fail(f"{HANDOVERS}: {exc}")
        return KeyChain.build([public_key_pem], [])
    if chain.handovers:
        report.checks.append(
            f"key chain: {len(chain.handovers)} audit key handover(s) signed by both keys, "
            "anchored at the pinned key"
        )
    return chain


def check_heads(files: Files, chain: KeyChain, report: Report) -> Heads:
    """Return the heads that verify, by tree size; report each one that does not."""
    heads: Heads = {}
    for head in json_lines(files.get("audit/heads.jsonl", b""), "audit/heads.jsonl", report):
        size = int(head["tree_size"])
        lines = str(head["checkpoint"]).split("\n")
        root_b64 = head["root_hash"]
        if len(lines) < 3 or lines[1] != str(size) or lines[2] != root_b64:
            report.fail(
                f"audit/heads.jsonl: head {size}: checkpoint does not state its size and root"
            )
            continue
        if not signature_verifies(
            chain.pem_for(size),
            base64.b64decode(head["signature"]),
            str(head["checkpoint"]).encode(),
        ):
            report.fail(
                f"audit/heads.jsonl: head {size}: signature does not verify with "
                f"{chain.describe(size)} (signed by another key, one no valid handover "
                "introduced, or altered)"
            )
            continue
        heads[size] = head
    report.passed("heads", f"{len(heads)} signed tree heads verify")
    return heads
