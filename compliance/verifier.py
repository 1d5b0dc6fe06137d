"""Offline verification of a Cofre evidence bundle: for a QSA with a file and a public key.

IN PCI SCOPE (as evidence), but deliberately small and standalone: it needs only the
Python standard library, `cryptography`, and `audit.merkle` (RFC 9162 hashing), never
the vault, the HSM or a network. An import-linter contract keeps it that way.

What it checks, in order, reporting every problem it finds (not only the first):

1. the manifest's signature, with the public key the auditor was given;
2. every file listed in the manifest: present, same size, same SHA-256; nothing extra;
3. every signed tree head's signature, and that its checkpoint states its size and root;
4. the audit entries: consecutive leaf indices exactly covering the range the manifest
   claims, each entry's time inside the claimed period;
5. the Merkle root recomputed from the entries (and the subtree hashes around them)
   equals the covering signed head's root, and each entry's inclusion proof verifies,
   which names the first entry that was changed, removed or reordered;
6. the policy versions in force during the period (`policy/versions.jsonl`) are policy
   load/reload entries of the log itself (text matching its SHA-256, inclusion proof
   valid), the first one in force at the period's start, and `policy/policy.toml` is
   the last one's text (not a file read from disk at export time);
7. with a previous bundle: its manifest's signature; that this bundle starts exactly
   where the previous one ended, by leaf index and by time (no entry in neither bundle
   or in both); and the consistency proof from its last signed head to this bundle's
   (a rewritten, forked log fails here).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from audit.errors import ProofError
from audit.merkle import CompactRange, leaf_hash, verify_consistency, verify_inclusion

BUNDLE_FORMAT: Final = "cofre-evidence/1"
MANIFEST: Final = "manifest.json"
SIGNATURE: Final = "manifest.sig"
MAX_FILE: Final = 512 * 1024 * 1024
# The audit actions that record the policy put in force (with its SHA-256 and text).
POLICY_ACTIONS: Final = ("policy.load", "policy.reload")


# The checks every bundle must pass; a chained bundle (`--previous`) must pass two more,
# and a bundle that names a previous head must prove it (`previous_head`).
REQUIRED_CHECKS: Final = frozenset({"signature", "files", "heads", "entries", "policy"})
CHAIN_CHECKS: Final = frozenset({"previous", "chain"})


@dataclass
class Report:
    """The verdict on a bundle. It fails closed: `ok` holds only when no check failed
    and every check in `required` ran and passed, so a check that returns early
    without a verdict (or never runs) makes the report FAILED, never VERIFIED."""

    problems: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    required: frozenset[str] = REQUIRED_CHECKS
    passed_checks: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.problems and self.required <= self.passed_checks

    def fail(self, message: str) -> None:
        self.problems.append(message)

    def passed(self, check: str, message: str) -> None:
        self.passed_checks.add(check)
        self.checks.append(message)

    def missing_checks(self) -> list[str]:
        """Required checks that did not pass (ran and failed, or never ran)."""
        return sorted(self.required - self.passed_checks)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": self.problems,
            "missing_checks": self.missing_checks(),
            "checks": self.checks,
            "summary": self.summary,
        }


def read_bundle(path: Path) -> dict[str, bytes]:
    """Return the bundle's regular files by name. Links, devices, absolute paths and
    '..' are refused (the file comes from outside)."""
    files: dict[str, bytes] = {}
    with tarfile.open(path, "r:gz") as archive:
        for member in archive.getmembers():
            name = member.name
            if member.isdir():
                continue
            if not member.isfile() or name.startswith("/") or ".." in Path(name).parts:
                raise ValueError(f"unsafe member in bundle: {name!r}")
            if member.size > MAX_FILE:
                raise ValueError(f"member too large: {name!r}")
            handle = archive.extractfile(member)
            if handle is None:
                raise ValueError(f"unreadable member: {name!r}")
            files[name] = handle.read()
    return files


def _verify_signature(public_key_pem: bytes, signature: bytes, message: bytes) -> bool:
    public = serialization.load_pem_public_key(public_key_pem)
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, message)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _lines(data: bytes, name: str = "", report: Report | None = None) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a malformed line is reported and skipped."""
    out = []
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if isinstance(value, dict):
            out.append(value)
        elif report is not None:
            report.fail(f"{name}: line {number} is not a JSON object")
    return out


def _root(blocks: dict[tuple[int, int], bytes], leaves: dict[int, bytes], size: int) -> bytes:
    """The root of the tree of `size` leaves, rebuilt left to right from the period's
    leaves and the bundle's complete-subtree hashes around them (`CompactRange`, as the
    sequencer built it). A leaf of the period is always hashed from its entry: a subtree
    hash that would stand in for one is refused, so an altered entry cannot hide behind
    its original subtree hash. Raises `ProofError` for a position nothing covers."""
    starting = {
        index << level: (level, value)
        for (level, index), value in blocks.items()
        if 0 <= level < size.bit_length() and 0 <= index < size
    }
    tree = CompactRange()
    while tree.size < size:
        at = tree.size
        if at in leaves:
            tree.append(leaves[at])
            continue
        if at not in starting:
            raise ProofError(f"no leaf {at} and no subtree hash covering it")
        level, value = starting[at]
        # Bounded before shifting: a forged level must not cost memory or time.
        end = at + (1 << level) if 0 <= level < size.bit_length() else size + 1
        if end > size or any(at <= i < end for i in leaves):
            raise ProofError(
                f"the subtree hash at level {level} from leaf {at} overlaps the period's "
                "entries or the tree's end"
            )
        tree.append_subtree(level, value)
    return tree.root()


def verify_bundle(path: Path, public_key_pem: bytes, previous: Path | None = None) -> Report:
    """Verify the bundle at `path`; see the module docstring. Never raises for a bad
    bundle: every problem is in the returned `Report`."""
    report = Report(required=REQUIRED_CHECKS | (CHAIN_CHECKS if previous else frozenset()))
    try:
        files = read_bundle(path)
    except (OSError, tarfile.TarError, ValueError) as exc:
        report.fail(f"cannot read the bundle: {exc}")
        return report
    manifest_bytes = files.get(MANIFEST)
    signature = files.get(SIGNATURE)
    if manifest_bytes is None or signature is None:
        report.fail("the bundle has no manifest.json or manifest.sig")
        return report
    if _verify_signature(public_key_pem, signature, manifest_bytes):
        report.passed("signature", "manifest signature verifies with the given public key")
    else:
        report.fail(
            "manifest.sig: the manifest's signature does not verify with the given "
            "public key (altered manifest, or signed by another key)"
        )
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError:
        report.fail("manifest.json: not valid JSON")
        return report
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        report.fail(f"manifest.json: unknown format {manifest.get('format')!r}")
        return report
    report.summary = {
        k: manifest.get(k)
        for k in (
            "vault_version",
            "generated_at",
            "generator",
            "period",
            "entries",
            "covering_head",
        )
    }
    try:
        _check_files(files, manifest, report)
        heads = _check_heads(files, public_key_pem, report)
        _check_entries(files, manifest, heads, report)
        _check_policy(files, manifest, heads, report)
        if manifest.get("previous_head") is not None:
            # A bundle that names a previous head is OK only once that head is proven.
            report.required = report.required | {"previous_head"}
            _check_previous_head(files, manifest, heads, report)
        if previous is not None:
            _check_previous(
                files, manifest, heads, previous, public_key_pem=public_key_pem, report=report
            )
    except (ValueError, KeyError, TypeError) as exc:
        # Malformed content that got past the hash checks (or with them already failed):
        # a verdict, not a crash.
        report.fail(f"malformed bundle content: {type(exc).__name__}: {exc}")
    return report


def _check_files(files: dict[str, bytes], manifest: dict[str, Any], report: Report) -> None:
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


def _check_heads(
    files: dict[str, bytes], public_key_pem: bytes, report: Report
) -> dict[int, dict[str, Any]]:
    heads: dict[int, dict[str, Any]] = {}
    for head in _lines(files.get("audit/heads.jsonl", b""), "audit/heads.jsonl", report):
        size = int(head["tree_size"])
        lines = str(head["checkpoint"]).split("\n")
        root_b64 = head["root_hash"]
        if len(lines) < 3 or lines[1] != str(size) or lines[2] != root_b64:
            report.fail(
                f"audit/heads.jsonl: head {size}: checkpoint does not state its size and root"
            )
            continue
        if not _verify_signature(
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


def _check_entries(
    files: dict[str, bytes],
    manifest: dict[str, Any],
    heads: dict[int, dict[str, Any]],
    report: Report,
) -> None:
    claimed = manifest.get("entries", {})
    start, end = int(claimed.get("first_index", 0)), int(claimed.get("end_index", 0))
    size = int(manifest.get("covering_head", {}).get("tree_size", 0))
    head = heads.get(size)
    if head is None:
        report.fail(f"manifest.json: covering head {size} is not among the verified heads")
        return
    root = base64.b64decode(head["root_hash"])
    entries = _lines(files.get("audit/entries.jsonl", b""), "audit/entries.jsonl", report)
    period = manifest.get("period", {})
    leaves: dict[int, bytes] = {}
    expected = start
    for entry in entries:
        index = int(entry["index"])
        if index != expected:
            report.fail(f"audit/entries.jsonl: entry {expected} is missing (next is {index})")
            expected = index
        payload = str(entry["payload"])
        leaves[index] = leaf_hash(payload.encode("utf-8"))
        at = json.loads(payload).get("time", "")
        if period and not (period["from"] <= at < period["to"]):
            report.fail(f"audit/entries.jsonl: entry {index} at {at} is outside the period")
        expected = index + 1
    if expected != end:
        report.fail(
            f"audit/entries.jsonl: ends at index {expected}, but the manifest claims "
            f"entries up to {end} (the period was cut short)"
        )
    blocks = {
        (int(b["level"]), int(b["index"])): base64.b64decode(b["hash"])
        for b in _lines(files.get("audit/subtrees.jsonl", b""))
    }
    try:
        recomputed = _root(blocks, leaves, size)
    except ProofError as exc:
        report.fail(f"audit/subtrees.jsonl: {exc}")
        return
    proofs = {
        int(p["index"]): [base64.b64decode(h) for h in p["proof"]]
        for p in _lines(files.get("audit/inclusion.jsonl", b""))
    }
    first_bad = next(
        (
            i
            for i in sorted(leaves)
            if i in proofs and not _included(leaves[i], i, size, proofs[i], root)
        ),
        None,
    )
    if recomputed != root:
        where = f"; first bad entry: index {first_bad}" if first_bad is not None else ""
        report.fail(
            f"audit/entries.jsonl: the Merkle root recomputed from the entries does "
            f"not match signed head {size}{where}"
        )
    elif first_bad is not None:
        report.fail(f"audit/inclusion.jsonl: the inclusion proof of entry {first_bad} fails")
    else:
        report.passed(
            "entries",
            f"entries {start}..{end - 1} recompute signed head {size}'s root; "
            f"{len(proofs)} inclusion proofs verify",
        )


def _check_policy(
    files: dict[str, bytes],
    manifest: dict[str, Any],
    heads: dict[int, dict[str, Any]],
    report: Report,
) -> None:
    """The policy versions in force during the period come from the log itself: each is
    a `policy.load`/`policy.reload` entry whose text matches its SHA-256 and whose
    inclusion proof verifies against the covering head; the one in force at the start
    is at or before the period's first entry; every policy entry of the period is among
    them; and `policy/policy.toml` is the text of the last one."""
    name = "policy/versions.jsonl"
    size = int(manifest.get("covering_head", {}).get("tree_size", 0))
    head = heads.get(size)
    if head is None:
        return  # already reported by the entries check
    root = base64.b64decode(head["root_hash"])
    start = int(manifest.get("entries", {}).get("first_index", 0))
    versions = _lines(files.get(name, b""), name, report)
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
        if not _included(leaf_hash(payload.encode("utf-8")), index, size, proof, root):
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
    entries = _lines(files.get("audit/entries.jsonl", b""))
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


def _included(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> bool:
    try:
        verify_inclusion(leaf, index, size, proof, root)
    except ProofError:
        return False
    return True


def _check_previous_head(
    files: dict[str, bytes],
    manifest: dict[str, Any],
    heads: dict[int, dict[str, Any]],
    report: Report,
) -> None:
    """The manifest's previous head must be a prefix of this bundle's covering head: the
    bundle's consistency proof from one to the other must verify (a previous head the
    log never had cannot pass, whoever signed the manifest)."""
    old = manifest["previous_head"]
    size1, root1 = int(old["tree_size"]), base64.b64decode(old["root_hash"])
    size2 = int(manifest["covering_head"]["tree_size"])
    head = heads.get(size2)
    if head is None:
        report.fail(f"previous_head: no signed head of size {size2} to prove it against")
        return
    data = files.get("audit/consistency.json")
    if data is None:
        report.fail("previous_head: the bundle has no consistency proof (audit/consistency.json)")
        return
    proof = json.loads(data)
    if int(proof.get("size1", -1)) != size1 or int(proof.get("size2", -1)) != size2:
        report.fail(
            f"previous_head: audit/consistency.json proves {proof.get('size1')} -> "
            f"{proof.get('size2')}, the manifest claims {size1} -> {size2}"
        )
        return
    try:
        verify_consistency(
            size1,
            size2,
            [base64.b64decode(h) for h in proof["proof"]],
            root1,
            base64.b64decode(head["root_hash"]),
        )
    except ProofError as exc:
        report.fail(
            f"previous_head (tree {size1}) is not a prefix of the covering head ({exc}): "
            "a head this log never signed, or a forked history"
        )
        return
    report.passed(
        "previous_head", f"previous head {size1} is a prefix of the covering head {size2}"
    )


def _check_previous(
    files: dict[str, bytes],
    manifest: dict[str, Any],
    heads: dict[int, dict[str, Any]],
    previous: Path,
    *,
    public_key_pem: bytes,
    report: Report,
) -> None:
    try:
        before = read_bundle(previous)
    except (OSError, tarfile.TarError, ValueError) as exc:
        report.fail(f"cannot read the previous bundle: {exc}")
        return
    if not _verify_signature(public_key_pem, before.get(SIGNATURE, b""), before.get(MANIFEST, b"")):
        report.fail("previous bundle: its manifest signature does not verify")
        return
    previous_manifest = json.loads(before[MANIFEST])
    _check_chain(previous_manifest, manifest, report)
    old = previous_manifest["covering_head"]
    if manifest.get("previous_head") != old:
        report.fail(
            "previous_head: this bundle names a previous head that is not the previous "
            "bundle's covering head"
        )
    size1, root1 = int(old["tree_size"]), base64.b64decode(old["root_hash"])
    size2 = int(manifest["covering_head"]["tree_size"])
    head = heads.get(size2)
    if head is None:
        report.fail(
            f"previous bundle: no verified signed head {size2} to prove consistency against"
        )
        return
    data = files.get("audit/consistency.json")
    if data is None:
        report.fail("audit/consistency.json: no consistency proof from the previous bundle")
        return
    proof = json.loads(data)
    if int(proof.get("size1", -1)) != size1:
        report.fail(
            f"audit/consistency.json: proves from size {proof.get('size1')}, but the "
            f"previous bundle ends at {size1}"
        )
        return
    try:
        verify_consistency(
            size1,
            size2,
            [base64.b64decode(h) for h in proof["proof"]],
            root1,
            base64.b64decode(head["root_hash"]),
        )
    except ProofError as exc:
        report.fail(
            f"audit/consistency.json: the log is not an extension of the previous "
            f"bundle's ({exc}): a rewritten or forked history"
        )
        return
    report.passed("previous", f"consistent with the previous bundle (tree {size1} -> {size2})")


def _check_chain(before: dict[str, Any], manifest: dict[str, Any], report: Report) -> None:
    """A chained bundle starts exactly where the previous one ended: the entries in
    between would be in neither bundle (a gap), or counted twice (an overlap)."""
    previous_end = int(before["entries"]["end_index"])
    start = int(manifest["entries"]["first_index"])
    end = int(manifest["entries"]["end_index"])
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
    ended, starts = before.get("period", {}).get("to"), manifest.get("period", {}).get("from")
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


def render_text(report: Report) -> str:
    out = io.StringIO()
    out.write(("VERIFIED" if report.ok else "FAILED") + "\n")
    for key, value in report.summary.items():
        out.write(f"  {key}: {json.dumps(value)}\n")
    for check in report.checks:
        out.write(f"  ok    {check}\n")
    for problem in report.problems:
        out.write(f"  FAIL  {problem}\n")
    if not report.problems:
        for check in report.missing_checks():
            out.write(f"  FAIL  the {check} check did not run to a verdict\n")
    return out.getvalue()
