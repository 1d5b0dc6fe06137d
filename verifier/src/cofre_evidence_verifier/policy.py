"""Check 6: the policy versions in force during the period come from the log itself."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cofre_evidence_verifier.bundle import POLICY_ACTIONS, Files, Heads, json_lines
from cofre_evidence_verifier.merkle import included, leaf_hash
from cofre_evidence_verifier.report import Report


def check_policy(files: Files, manifest: dict[str, Any], heads: Heads, report: Report) -> None:
    """Each version in `policy/versions.jsonl` is a `policy.load`/`policy.reload` entry
    whose text matches its SHA-256 and whose inclusion proof verifies against the
    covering head; the one in force at the start is at or before the period's first
    entry; every policy entry of the period is among them; and `policy/policy.toml` is
    the text of the last one. Reports each that does not hold."""
    name = "policy/versions.jsonl"
    size = int(manifest.get("covering_head", {}).get("tree_size", 0))
    head = heads.get(size)
    if head is None:
        return  # already reported by the entries check
    root = base64.b64decode(head["root_hash"])
    start = int(manifest.get("entries", {}).get("first_index", 0))
    versions = json_lines(files.get(name, b""), name, report)
    if not versions:
        report.fail(f"{name}: no policy version in force during the period is evidenced")
        return
    clean = True
    texts: list[str] = []
    for version in versions:
        index, payload = int(version["index"]), str(version["payload"])
        entry = json.loads(payload)
        text = entry.get("document")
        digest = entry.get("details", {}).get("sha256")
        if entry.get("action") not in POLICY_ACTIONS or not isinstance(text, str):
            report.fail(f"{name}: entry {index} is not a policy load or reload with its text")
            clean = False
            continue
        if hashlib.sha256(text.encode("utf-8")).hexdigest() != digest:
            report.fail(f"{name}: entry {index}: the policy text does not match its SHA-256")
            clean = False
        proof = [base64.b64decode(h) for h in version["proof"]]
        if not included(leaf_hash(payload.encode("utf-8")), index, size, proof, root):
            report.fail(
                f"{name}: entry {index} is not in the log (its inclusion proof in signed "
                f"head {size} fails)"
            )
            clean = False
        texts.append(text)
    indices = [int(v["index"]) for v in versions]
    if indices != sorted(set(indices)) or indices[0] > start:
        report.fail(
            f"{name}: no policy version in force at the start of the period (index {start})"
        )
        clean = False
    entries = json_lines(files.get("audit/entries.jsonl", b""))
    listed = {int(v["index"]): str(v["payload"]) for v in versions}
    for entry in entries:
        payload = str(entry["payload"])
        changed = json.loads(payload).get("action") in POLICY_ACTIONS
        if changed and listed.get(int(entry["index"])) != payload:
            report.fail(f"{name}: the policy change at entry {entry['index']} is missing")
            clean = False
    current = files.get("policy/policy.toml", b"").decode("utf-8", "replace")
    if texts and current != texts[-1]:
        report.fail(
            "policy/policy.toml: not the policy in force at the end of the period "
            "(the text of the last policy entry)"
        )
        clean = False
    if clean:
        report.passed(
            "policy",
            f"{len(versions)} policy versions in force during the period are log entries "
            "with matching SHA-256 and valid inclusion proofs",
        )
