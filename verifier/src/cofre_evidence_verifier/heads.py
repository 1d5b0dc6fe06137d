"""Check 3: every signed tree head in `audit/heads.jsonl` verifies with the audit key in
force at its size (`keychain`: the pinned key, or the key a handover in
`audit/handovers.jsonl` introduced), and its checkpoint text states its own size and
root. A head at a handover's size must state the handover's origin and root: the new
key vouches for the old one only up to the tree it saw, so a leaked old key cannot sign
another tree at that size."""

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
    forked: set[int] = set()
    handovers = {handover.size: handover for handover in chain.handovers}
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
        handover = handovers.get(size)
        if handover is not None and (
            lines[0] != handover.checkpoint.origin
            or base64.b64decode(root_b64) != handover.checkpoint.root
        ):
            report.fail(
                f"audit/heads.jsonl: head {size}: its root is not the root of the key "
                f"handover at size {size} (the tree both keys signed there): a head "
                "signed with the old key for another tree"
            )
            continue
        # Two signed trees of one size are a fork (the log showed two histories): neither
        # is kept, so no check can rest on the one that happened to come last.
        known = heads.get(size)
        if size in forked or (known is not None and known["root_hash"] != root_b64):
            if size not in forked:
                report.fail(
                    f"audit/heads.jsonl: two signed heads of size {size} with different "
                    "roots: a fork (equivocation: the log showed two histories)"
                )
            forked.add(size)
            heads.pop(size, None)
            continue
        heads[size] = head
    report.passed("heads", f"{len(heads)} signed tree heads verify")
    return heads
