"""Check 6: the policy versions in force during the period come from the log itself."""

from __future__ import annotations

import base64
import hashlib
import tomllib
from bisect import bisect_right
from typing import Any

from cofre_evidence_verifier.bundle import (
    POLICY_ACTIONS,
    Files,
    Heads,
    hash_list,
    integer,
    json_lines,
    json_object,
    string,
)
from cofre_evidence_verifier.errors import MalformedBundle
from cofre_evidence_verifier.merkle import included, leaf_hash
from cofre_evidence_verifier.report import Report

# What a vault writes before it loads its first policy: `cofre hsm init` and a first
# `cofre serve` create and register its keys, and an operator may read the log with
# `cofre audit head|prove|verify|export` (each an `audit_read` entry, finding F6).
# Nothing in them is done under a policy.
SET_UP_ACTIONS = frozenset({"key.create", "key.register", "audit_read"})
# An `audit_read` is set-up only as the CLI's (its actor the command): the API's is an
# operation a policy authorised, and a process serves only after its `policy.load`
# (review of session 32: one before the first load is a load the log lost).
CLI_READ_ACTOR = "cofre audit "


def policy_documents(files: Files) -> list[tuple[int, dict[str, Any]]]:
    """Each policy version the bundle carries (``policy/versions.jsonl``) as its leaf
    index and parsed document, oldest first; a version that does not parse is left out
    (`check_policy` reports it). What the custody and dual control checks read the
    officers' registered MFA keys from."""
    out = []
    for version in json_lines(files.get("policy/versions.jsonl", b"")):
        index, payload = version.get("index"), version.get("payload")
        if not isinstance(index, int) or not isinstance(payload, str):
            continue
        try:
            # tomllib recurses once per nested array or table, with no bound of its
            # own: a document nested deeper than the stack is one that does not parse.
            document = tomllib.loads(str(_object(payload).get("document")))
        except (ValueError, RecursionError):
            continue
        out.append((index, document))
    return sorted(out, key=lambda pair: pair[0])


def certificate_identity_problem(identity: str) -> str | None:
    """Why `identity` is not one a client certificate can carry, or None. The vault takes
    every identity from a certificate's URI subjectAltName, an IA5String (RFC 5280
    4.2.1.6: ASCII); a policy version the operator logged can register any name, and one
    such as ``officer-b\\u043eb`` (a Cyrillic o) draws as another officer's in the
    report (session 37). A space is refused too, as the vault's policy loader refuses it
    (a URI holds none, RFC 3986): ``officer-bob `` drew as Bob (review rev38). The
    identity is shown quoted, its non-ASCII characters escaped."""
    if all("!" <= c <= "~" for c in identity):
        return None
    return (
        f"its identity {identity!a} is not printable ASCII without a space, which no "
        "client certificate carries (a URI subjectAltName is ASCII, RFC 5280 4.2.1.6, "
        "and holds no space): a name written to look like another's"
    )


def _leaf(pair: tuple[int, dict[str, Any]]) -> int:
    return pair[0]


def in_force(documents: list[tuple[int, dict[str, Any]]], index: int) -> tuple[int, dict[str, Any]]:
    """The policy version of `documents` (not empty, by leaf index as `policy_documents`
    sorts them) in force at leaf `index`: the last one at or before it, or the first
    when the entry is older than every one (the policy in force at the period's start).
    Found by bisection: it is asked once per custody record and per ceremony, and a
    scan of every version each time made a hostile bundle's versions times its records
    (review 35: a hang)."""
    at = bisect_right(documents, index, key=_leaf)
    return documents[at - 1] if at else documents[0]


def _versions(lines: list[dict[str, Any]]) -> list[tuple[int, str, list[bytes]]]:
    """Each version's leaf index, payload and inclusion proof. Raises `MalformedBundle`
    for a line of another shape."""
    name = "policy/versions.jsonl"
    return [
        (
            integer(line.get("index"), f"{name}: an index"),
            string(line.get("payload"), f"{name}: a payload"),
            hash_list(line.get("proof"), f"{name}: a proof"),
        )
        for line in lines
    ]


def _object(payload: str) -> dict[str, Any]:
    """The audit entry `payload` as an object (empty if it is not one: its inclusion
    proof or the entries check then fails)."""
    try:
        return json_object(payload, "an entry")
    except ValueError:
        return {}


def _unlisted_changes(files: Files, versions: list[tuple[int, str, list[bytes]]]) -> list[int]:
    """The indices of the period's policy load/reload entries that are not among the
    versions, payload for payload."""
    listed = {index: payload for index, payload, _ in versions}
    out = []
    for entry in json_lines(files.get("audit/entries.jsonl", b"")):
        payload, index = entry.get("payload"), entry.get("index")
        if not isinstance(payload, str) or not isinstance(index, int):
            continue  # reported by the entries check
        changed = _object(payload).get("action") in POLICY_ACTIONS
        if changed and listed.get(index) != payload:
            out.append(index)
    return out


def _is_set_up(entry: dict[str, Any]) -> bool:
    action, actor = entry.get("action"), entry.get("actor")
    if action == "audit_read":
        return isinstance(actor, str) and actor.startswith(CLI_READ_ACTOR)
    return action in SET_UP_ACTIONS


def _set_up_before(files: Files, first: int) -> bool:
    """Whether the log's entries 0 to `first` - 1 are all in the bundle and all the
    keys' set-up (`SET_UP_ACTIONS`): the log began before any policy was loaded, so none
    was in force at its first entry, and none needed to be (review 41: every bundle of
    a vault's first day failed)."""
    seen = set()
    for entry in json_lines(files.get("audit/entries.jsonl", b"")):
        payload, index = entry.get("payload"), entry.get("index")
        if not isinstance(index, int) or index >= first:
            continue
        if not isinstance(payload, str) or not _is_set_up(_object(payload)):
            return False
        seen.add(index)
    return seen == set(range(first))


def check_policy(files: Files, manifest: dict[str, Any], heads: Heads, report: Report) -> None:
    """Each version in `policy/versions.jsonl` is a `policy.load`/`policy.reload` entry
    whose text matches its SHA-256 and whose inclusion proof verifies against the
    covering head; the one in force at the start is at or before the period's first
    entry (or the period starts the log, and only the keys' set-up comes before the
    first: `_set_up_before`); every policy entry of the period is among them; and
    `policy/policy.toml` is the text of the last one. Reports each that does not hold."""
    name = "policy/versions.jsonl"
    size = manifest["covering_head"]["tree_size"]
    head = heads.get(size)
    if head is None:
        return  # already reported by the entries check
    root = base64.b64decode(head["root_hash"])
    start = manifest["entries"]["first_index"]
    try:
        versions = _versions(json_lines(files.get(name, b""), name, report))
    except MalformedBundle as exc:
        report.fail(str(exc))
        return
    if not versions:
        report.fail(f"{name}: no policy version in force during the period is evidenced")
        return
    clean = True
    texts: list[str] = []
    for index, payload, proof in versions:
        entry = _object(payload)
        text = entry.get("document")
        details = entry.get("details")
        digest = details.get("sha256") if isinstance(details, dict) else None
        if entry.get("action") not in POLICY_ACTIONS or not isinstance(text, str):
            report.fail(f"{name}: entry {index} is not a policy load or reload with its text")
            clean = False
            continue
        if hashlib.sha256(text.encode("utf-8")).hexdigest() != digest:
            report.fail(f"{name}: entry {index}: the policy text does not match its SHA-256")
            clean = False
        if not included(leaf_hash(payload.encode("utf-8")), index, size, proof, root):
            report.fail(
                f"{name}: entry {index} is not in the log (its inclusion proof in signed "
                f"head {size} fails)"
            )
            clean = False
        texts.append(text)
    indices = [index for index, _, _ in versions]
    end = manifest["entries"]["end_index"]
    if after := [index for index in indices if index >= end]:
        # Review 31: a reload from after the period made policy.toml a later text.
        report.fail(f"{name}: entry {after[0]} is a policy version from after the period")
    log_began_unpoliced = start == 0 and _set_up_before(files, indices[0])
    if indices != sorted(set(indices)) or (indices[0] > start and not log_began_unpoliced):
        report.fail(
            f"{name}: no policy version in force at the start of the period (index {start})"
        )
        clean = False
    for index in _unlisted_changes(files, versions):
        report.fail(f"{name}: the policy change at entry {index} is missing")
        clean = False
    current = files.get("policy/policy.toml", b"").decode("utf-8", "replace")
    if texts and current != texts[-1]:
        report.fail(
            "policy/policy.toml: not the policy in force at the end of the period "
            "(the text of the last policy entry)"
        )
        clean = False
    if clean:
        before = (
            f"; entries 0-{indices[0] - 1}, before the first, set the keys up"
            if indices[0] > start
            else ""
        )
        report.passed(
            "policy",
            f"{len(versions)} policy versions in force during the period are log entries "
            f"with matching SHA-256 and valid inclusion proofs{before}",
        )
