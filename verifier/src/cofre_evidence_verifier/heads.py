"""Check 3: every signed tree head in `audit/heads.jsonl` verifies with the audit key,
and its checkpoint text states its own size and root."""

from __future__ import annotations

import base64

from cofre_evidence_verifier.bundle import Files, Heads, json_lines, signature_verifies
from cofre_evidence_verifier.report import Report


def check_heads(files: Files, public_key_pem: bytes, report: Report) -> Heads:
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
            public_key_pem, base64.b64decode(head["signature"]), str(head["checkpoint"]).encode()
        ):
            report.fail(
                f"audit/heads.jsonl: head {size}: signature does not verify (signed "
                "by another key, or altered)"
            )
            continue
        heads[size] = head
    report.passed("heads", f"{len(heads)} signed tree heads verify")
    return heads
