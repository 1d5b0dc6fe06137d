"""Check 2: every file the manifest lists is in the bundle with its size and SHA-256,
and nothing else is. The report also names the listed files that no later check ties
to the witnessed log (review 30): the manifest's signature, by the vault's own audit key,
is all that vouches for them, so they are the statements of whoever holds the HSM PIN
at export (a key left out of `keys/inventory.json`, a setting changed), not proofs."""

from __future__ import annotations

import hashlib
from typing import Any, Final

from cofre_evidence_verifier.bundle import MANIFEST, SIGNATURE, Files
from cofre_evidence_verifier.report import Report

# What the checks bind to the covering head, which the witnesses cosigned: the log's
# entries and proofs, and the files whose every record is an audit entry of the log with
# its inclusion proof (policy versions, custody acknowledgements, dual control records).
PROVEN_BY_THE_LOG: Final = frozenset(
    {
        "audit/entries.jsonl",
        "audit/heads.jsonl",
        "audit/checkpoint.note",
        "audit/subtrees.jsonl",
        "audit/boundaries.jsonl",
        "audit/inclusion.jsonl",
        "audit/consistency.json",
        "audit/handovers.jsonl",
        "audit/carried.jsonl",
        "policy/versions.jsonl",
        "policy/policy.toml",
        "keys/custody.json",
        "keys/dual_control.json",
    }
)


def exporter_statements(manifest: dict[str, Any]) -> list[str]:
    """The files `manifest` lists that no check ties to the witnessed log, sorted."""
    return sorted({str(f["path"]) for f in manifest.get("files", [])} - PROVEN_BY_THE_LOG)


def check_files(files: Files, manifest: dict[str, Any], report: Report) -> None:
    """Report each listed file that is missing or differs, and each unlisted one."""
    listed = {f["path"]: f for f in manifest.get("files", [])}
    clean = True
    for name, meta in listed.items():
        data = files.get(name)
        if data is None:
            report.fail(f"{name}: listed in the manifest but missing from the bundle")
            clean = False
        elif len(data) != meta["size"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
            report.fail(f"{name}: content differs from the manifest (size or SHA-256)")
            clean = False
    for name in sorted(set(files) - set(listed) - {MANIFEST, SIGNATURE}):
        report.fail(f"{name}: in the bundle but not in the manifest")
        clean = False
    if clean:
        report.passed("files", f"{len(listed)} files match the manifest's SHA-256 and sizes")
    stated = exporter_statements(manifest)
    if stated:
        report.checks.append(
            "NOT PROVEN by the log: the vault's audit key alone vouches for "
            + ", ".join(stated)
            + " (the exporter's statements at export: whoever holds the HSM PIN can "
            "change them and re-sign the manifest; check them against the vault "
            "yourself, docs/auditor-guide.md)"
        )
