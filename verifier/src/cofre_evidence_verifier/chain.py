"""Check 7: a bundle's place in the chain. A previous head it names is a prefix of its
covering head (`check_previous_head`); with the previous bundle at hand, that bundle's
signature, that it is of the same log (origin), that this one starts exactly where it
ended (`check_chain`), and the consistency proof from its covering head
(`check_previous`): a rewritten or forked log fails here."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cofre_evidence_verifier.bundle import (
    MANIFEST,
    SIGNATURE,
    Files,
    Heads,
    base64_bytes,
    hash_list,
    json_lines,
    json_object,
    load_json,
    manifest_problem,
    read_bundle,
    signature_verifies,
)
from cofre_evidence_verifier.errors import ProofError
from cofre_evidence_verifier.files import check_files
from cofre_evidence_verifier.merkle import verify_consistency
from cofre_evidence_verifier.report import Report

POLICY_VERSIONS = "policy/versions.jsonl"
POLICY_TEXT = "policy/policy.toml"

CONSISTENCY = "audit/consistency.json"


def check_previous_head(
    files: Files, manifest: dict[str, Any], heads: Heads, report: Report
) -> None:
    """The manifest's previous head must be a prefix of this bundle's covering head: the
    bundle's consistency proof from one to the other must verify (a previous head the
    log never had cannot pass, whoever signed the manifest)."""
    old = manifest["previous_head"]
    size1, root1 = old["tree_size"], base64_bytes(old["root_hash"], "previous_head.root_hash")
    size2 = manifest["covering_head"]["tree_size"]
    head = heads.get(size2)
    if head is None:
        report.fail(f"previous_head: no signed head of size {size2} to prove it against")
        return
    data = files.get(CONSISTENCY)
    if data is None:
        report.fail(f"previous_head: the bundle has no consistency proof ({CONSISTENCY})")
        return
    proof = json_object(data, CONSISTENCY)
    if proof.get("size1") != size1 or proof.get("size2") != size2:
        report.fail(
            f"previous_head: {CONSISTENCY} proves {proof.get('size1')} -> "
            f"{proof.get('size2')}, the manifest claims {size1} -> {size2}"
        )
        return
    problem = consistency_problem(proof, size1, root1, size2, head)
    if problem is not None:
        report.fail(
            f"previous_head (tree {size1}) is not a prefix of the covering head ({problem}): "
            "a head this log never signed, or a forked history"
        )
        return
    report.passed(
        "previous_head", f"previous head {size1} is a prefix of the covering head {size2}"
    )


def consistency_problem(
    proof: dict[str, Any], size1: int, root1: bytes, size2: int, head: dict[str, Any]
) -> ProofError | None:
    """Why the bundle's consistency `proof` does not lead from the tree of `size1` and
    `root1` to the signed `head` of `size2`; None when it verifies."""
    try:
        verify_consistency(
            size1,
            size2,
            hash_list(proof.get("proof"), f"{CONSISTENCY}: the proof"),
            root1,
            base64.b64decode(head["root_hash"]),
        )
    except ProofError as exc:
        return exc
    return None


def read_signed(
    previous: Path, public_keys: Sequence[bytes], report: Report, label: str = "previous bundle"
) -> tuple[Files, dict[str, Any]] | None:
    """The previous bundle's files and manifest (or an earlier one's, named `label` in
    the report), once its manifest's signature verifies and its shape is a manifest's;
    else None, reported."""
    try:
        before = read_bundle(previous)
    except (OSError, ValueError) as exc:
        report.fail(f"cannot read the {label}: {exc}")
        return None
    # Signed by a key of this bundle's key chain (an older one if the key was rotated
    # between the two exports).
    if not any(
        signature_verifies(pem, before.get(SIGNATURE, b""), before.get(MANIFEST, b""))
        for pem in public_keys
    ):
        report.fail(f"{label}: its manifest signature does not verify")
        return None
    # Signed, but by the same hands as this bundle: its shape is checked like this one's.
    try:
        previous_manifest = load_json(before[MANIFEST])
    except ValueError:
        previous_manifest = None
    problem = manifest_problem(previous_manifest)
    if problem is not None or not isinstance(previous_manifest, dict):
        report.fail(f"{label}: {problem}")
        return None
    # What is read of it (its policy.toml, its heads) must be what it signed: only the
    # signature was checked, so a replaced or removed policy.toml hid a reload left out
    # of this bundle (the policy carried across the chain, below).
    listed = Report()
    check_files(before, previous_manifest, listed)
    if listed.problems:
        for problem in listed.problems:
            report.fail(f"{label}: {problem}")
        return None
    return before, previous_manifest


def check_previous(
    files: Files,
    manifest: dict[str, Any],
    heads: Heads,
    previous: Path,
    *,
    public_keys: Sequence[bytes],
    report: Report,
) -> Files | None:
    """Check this bundle against the `previous` bundle file; see the module docstring.
    Returns the previous bundle's files once its signature and listing verify (check 6e
    carries its deleted tokens forward), else None."""
    read = read_signed(previous, public_keys, report)
    if read is None:
        return None
    before, previous_manifest = read
    check_chain(previous_manifest, manifest, report)
    _check_policy_carried(before, files, report)
    old = previous_manifest["covering_head"]
    _check_same_log(
        before, previous_manifest, heads.get(manifest["covering_head"]["tree_size"]), report
    )
    if manifest.get("previous_head") != old:
        report.fail(
            "previous_head: this bundle names a previous head that is not the previous "
            "bundle's covering head"
        )
    size1 = old["tree_size"]
    root1 = base64_bytes(old["root_hash"], "previous bundle: covering_head.root_hash")
    size2 = manifest["covering_head"]["tree_size"]
    head = heads.get(size2)
    if head is None:
        report.fail(
            f"previous bundle: no verified signed head {size2} to prove consistency against"
        )
        return before
    data = files.get(CONSISTENCY)
    if data is None:
        report.fail(f"{CONSISTENCY}: no consistency proof from the previous bundle")
        return before
    proof = json_object(data, CONSISTENCY)
    if proof.get("size1") != size1:
        report.fail(
            f"{CONSISTENCY}: proves from size {proof.get('size1')}, but the "
            f"previous bundle ends at {size1}"
        )
        return before
    problem = consistency_problem(proof, size1, root1, size2, head)
    if problem is not None:
        report.fail(
            f"{CONSISTENCY}: the log is not an extension of the previous "
            f"bundle's ({problem}): a rewritten or forked history"
        )
        return before
    report.passed("previous", f"consistent with the previous bundle (tree {size1} -> {size2})")
    return before


def _previous_origin(before: Files, previous_manifest: dict[str, Any]) -> str | None:
    """The origin of the previous bundle's covering head, from its `audit/heads.jsonl`
    when that file is the one its signed manifest lists (else None)."""
    name = "audit/heads.jsonl"
    data = before.get(name)
    listed = [f for f in previous_manifest["files"] if f["path"] == name]
    if data is None or len(listed) != 1 or hashlib.sha256(data).hexdigest() != listed[0]["sha256"]:
        return None
    size = previous_manifest["covering_head"]["tree_size"]
    for head in json_lines(data):
        if head.get("tree_size") == size:
            return str(head.get("checkpoint", "")).split("\n", 1)[0]
    return None


def _check_same_log(
    before: Files, previous_manifest: dict[str, Any], head: dict[str, Any] | None, report: Report
) -> None:
    """A chain is of one log: the previous bundle's covering head must be a checkpoint of
    this bundle's log (its origin), or entries of another log would pass for this one's
    history (the consistency proof does not cover the origin line)."""
    if head is None:
        return  # no covering head: reported below
    origin = str(head["checkpoint"]).split("\n", 1)[0]
    previous = _previous_origin(before, previous_manifest)
    if previous is None:
        report.fail(
            "previous bundle: its covering head is not in its audit/heads.jsonl as its "
            "manifest lists it: cannot tell which log it is of"
        )
    elif previous != origin:
        report.fail(
            f"previous bundle: a bundle of log {previous}, not of log {origin} (a chain is "
            "of one log)"
        )
    else:
        # Without --origin this is what pins the log: the previous bundle, one the
        # auditor verified, names it (session 36).
        report.passed("origin", f"of log {origin}, the log of the previous bundle")


def check_chain(before: dict[str, Any], manifest: dict[str, Any], report: Report) -> None:
    """A chained bundle starts exactly where the previous one ended: the entries in
    between would be in neither bundle (a gap), or counted twice (an overlap)."""
    # Both manifests' shapes are checked first (`bundle.manifest_problem`).
    previous_end = before["entries"]["end_index"]
    start = manifest["entries"]["first_index"]
    end = manifest["entries"]["end_index"]
    clean = True
    if start > previous_end:
        report.fail(
            f"chain: entries {previous_end}..{start - 1} are in neither bundle (the previous "
            f"bundle ends before index {previous_end}, this one starts at {start})"
        )
        clean = False
    elif start < previous_end:
        report.fail(
            f"chain: entries {start}..{min(previous_end, end) - 1} are in both bundles (the "
            f"previous bundle ends before index {previous_end}, this one starts at {start})"
        )
        clean = False
    ended, starts = before["period"]["to"], manifest["period"]["from"]
    if ended != starts:
        report.fail(
            f"chain: this period starts at {starts}, but the previous one ended at {ended} "
            "(periods must meet with no gap and no overlap)"
        )
        clean = False
    if clean:
        report.passed(
            "chain", f"starts exactly where the previous bundle ended (index {start}, {starts})"
        )


def _check_policy_carried(before: Files, files: Files, report: Report) -> None:
    """The policy version this bundle lists as in force at its start must be the one
    the previous bundle shows in force at its end (its `policy/policy.toml`). One
    bundle alone cannot show that no reload just before its start was left out
    (review 29, review 31); two chained ones can."""
    versions = json_lines(files.get(POLICY_VERSIONS, b""))
    ended = before.get(POLICY_TEXT)
    if not versions or ended is None:
        return  # the policy check reports a bundle without a version in force
    payload = versions[0].get("payload")
    entry = load_json(payload) if isinstance(payload, str) else None
    document = entry.get("document") if isinstance(entry, dict) else None
    if not isinstance(document, str) or document.encode("utf-8") != ended:
        report.fail(
            f"{POLICY_VERSIONS}: the policy listed as in force at the start is not the one "
            "the previous bundle shows in force at its end (a policy change between them "
            "was left out)"
        )
