"""Synthetic evidence bundles for the offline verifier's tests, made with the verifier's
own code and `cryptography` only (no vault, database or HSM), so each attack is one edit
away from a bundle that verifies.

The "operator" holds the audit private key (the HSM PIN) and can sign anything with it,
but gets witness cosignatures only on the checkpoints an honest witness would cosign:
those of the genuine log `build` is given. Taken from review 29's `bundlekit.py`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cofre_evidence_verifier.keychain import handover_note, handover_text
from cofre_evidence_verifier.merkle import leaf_hash, node_hash
from cofre_evidence_verifier.note import (
    Checkpoint,
    CosignerKey,
    NoteSignature,
    VerifierKey,
    ecdsa_verifier_key,
)
from cofre_evidence_verifier.report import Report
from cofre_evidence_verifier.verify import verify_bundle

ORIGIN: Final = "cofre-audit/cofre"
PERIOD: Final = ("2026-03-01T00:00:00.000000Z", "2026-03-02T00:00:00.000000Z")
POLICY: Final = '[identities."spiffe://cofre/payments"]\noperations = ["tokenize"]\n'


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 Merkle tree hash over leaf hashes (the reference recursion)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def inclusion(leaves: list[bytes], m: int) -> list[bytes]:
    """RFC 9162 inclusion proof of leaf `m` (the reference recursion)."""
    n = len(leaves)
    if n <= 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*inclusion(leaves[:k], m), mth(leaves[k:])]
    return [*inclusion(leaves[k:], m - k), mth(leaves[:k])]


def consistency(leaves: list[bytes], m: int) -> list[bytes]:
    """RFC 9162 consistency proof from the first `m` leaves (the reference recursion)."""

    def sub(m: int, d: list[bytes], b: bool) -> list[bytes]:
        n = len(d)
        if m == n:
            return [] if b else [mth(d)]
        k = 1
        while k * 2 < n:
            k *= 2
        if m <= k:
            return [*sub(m, d[:k], b), mth(d[k:])]
        return [*sub(m - k, d[k:], False), mth(d[:k])]

    return sub(m, leaves, True)


def blocks(start: int, end: int) -> list[tuple[int, int]]:
    """Aligned complete subtrees (level, index) that tile leaves [start, end)."""
    out, position = [], start
    while position < end:
        level = 0
        while position % (1 << (level + 1)) == 0 and position + (1 << (level + 1)) <= end:
            level += 1
        out.append((level, position >> level))
        position += 1 << level
    return out


class AuditKey:
    """The vault's audit key (ECDSA P-256), as its holder uses it."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data, ec.ECDSA(hashes.SHA256()))

    def vkey(self, origin: str = ORIGIN) -> VerifierKey:
        return ecdsa_verifier_key(origin, self.pem)


def payload(action: str, time: str, **extra: Any) -> str:
    """A canonical audit entry payload."""
    body = {
        "action": action,
        "actor": "spiffe://cofre/payments",
        "outcome": "success",
        "time": time,
        "details": {},
        **extra,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def policy_payload(time: str, document: str = POLICY, action: str = "policy.load") -> str:
    digest = hashlib.sha256(document.encode()).hexdigest()
    return payload(action, time, document=document, details={"sha256": digest})


def day_log(n: int = 20, day: str = "2026-03-01") -> list[str]:
    """A log of `n` entries: a policy.load at 0, then tokenize entries through the day."""
    out = [policy_payload(f"{day}T00:00:00.000000Z")]
    out += [
        payload("tokenize", f"{day}T{i % 24:02d}:00:{i % 60:02d}.000000Z", request_id=f"req-{i}")
        for i in range(1, n)
    ]
    return out


def cutoff(time: str = PERIOD[1]) -> str:
    """The `evidence.cutoff` entry an export writes first: its period ends there."""
    return payload("evidence.cutoff", time, actor="spiffe://cofre/auditor")


@dataclass
class Bundle:
    """A bundle's files (mutable), its audit key, and helpers to re-sign and write it."""

    key: AuditKey
    files: dict[str, bytes]
    manifest: dict[str, Any]
    extra_members: list[tuple[str, bytes]] = field(default_factory=list)

    def resign(self, *, listing: bool = True) -> None:
        """List every file in the manifest (unless not `listing`: the manifest's own
        `files` then stay) and sign it again (as the key holder can)."""
        if listing:
            self.manifest["files"] = [
                {"path": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                for n, d in sorted(self.files.items())
                if n not in ("manifest.json", "manifest.sig")
            ]
        data = json.dumps(self.manifest, indent=2, sort_keys=True).encode()
        self.files["manifest.json"] = data
        self.files["manifest.sig"] = self.key.sign(data)

    def jsonl(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.files.get(name, b"").decode().splitlines() if x]

    def set_jsonl(self, name: str, rows: list[dict[str, Any]]) -> None:
        self.files[name] = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()

    def write(self, path: Path, *, resign: bool = True) -> Path:
        """Write the tar.gz to `path` (signed again first unless `resign` is False)."""
        if resign:
            self.resign()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for name, data in [*sorted(self.files.items()), *self.extra_members]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        path.write_bytes(buffer.getvalue())
        return path


def head_json(key: AuditKey, size: int, root: bytes, origin: str = ORIGIN) -> dict[str, Any]:
    """A signed tree head as `audit/heads.jsonl` holds it."""
    text = Checkpoint(origin, size, root).text()
    return {
        "tree_size": size,
        "root_hash": b64(root),
        "timestamp_ms": 1_772_000_000_000,
        "key_id": "cofre-audit-v1",
        "checkpoint": text,
        "signature": b64(key.sign(text.encode())),
    }


def witnessed_note(
    key: AuditKey,
    head: dict[str, Any],
    witnesses: list[CosignerKey],
    timestamp: int = 1_772_400_000,
    origin: str = ORIGIN,
) -> bytes:
    """`head` as a signed note with the vault's signature and each witness's cosignature."""
    text = head["checkpoint"]
    vkey = key.vkey(origin)
    lines = NoteSignature(vkey.name, vkey.key_id, base64.b64decode(head["signature"])).line()
    for w in witnesses:
        lines += w.cosign(text, timestamp).line()
    return (text + "\n" + lines).encode()


def build(
    log: list[str],
    start: int,
    end: int,
    size: int | None = None,
    *,
    key: AuditKey | None = None,
    witnesses: list[CosignerKey] | None = None,
    period: tuple[str, str] | None = None,
    entries: list[tuple[int, str]] | None = None,
    origin: str = ORIGIN,
    policy_indices: list[int] | None = None,
) -> Bundle:
    """A valid bundle of entries [start, end) of `log`, covered by a head of `size`,
    witnessed by `witnesses`. Without a `size`, the export's `evidence.cutoff` entry is
    appended to the log (at the day's end) and the head covers it all. The period runs
    by default from entry `start`'s time (the day's start for 0) to entry `end`'s, so
    the entries just outside the range (`audit/boundaries.jsonl`) are dated outside it.
    `entries` overrides the entries file (what the bundle claims); proofs always come
    from the genuine log."""
    key = key or AuditKey()
    if size is None:
        log = [*log, cutoff()]
        size = len(log)
    if period is None:
        period = (
            str(json.loads(log[start])["time"]) if 0 < start < len(log) else PERIOD[0],
            str(json.loads(log[end])["time"]) if end < len(log) else PERIOD[1],
        )
    genuine = [leaf_hash(p.encode()) for p in log[:size]]
    root = mth(genuine)
    head = head_json(key, size, root, origin)
    files: dict[str, bytes] = {}
    bundle = Bundle(key, files, {})
    rows = entries if entries is not None else [(i, log[i]) for i in range(start, end)]
    bundle.set_jsonl("audit/entries.jsonl", [{"index": i, "payload": p} for i, p in rows])
    bundle.set_jsonl("audit/heads.jsonl", [head])
    wanted = blocks(0, start) + blocks(end, size)
    bundle.set_jsonl(
        "audit/subtrees.jsonl",
        [
            {"level": lv, "index": ix, "hash": b64(mth(genuine[ix << lv : (ix + 1) << lv]))}
            for lv, ix in wanted
        ],
    )
    bundle.set_jsonl(
        "audit/boundaries.jsonl",
        [
            {"index": i, "payload": log[i], "proof": [b64(h) for h in inclusion(genuine, i)]}
            for i in (start - 1, end)
            if 0 <= i < size
        ],
    )
    bundle.set_jsonl(
        "audit/inclusion.jsonl",
        [
            {"index": i, "proof": [b64(h) for h in inclusion(genuine, i)]}
            for i, _ in rows
            if 0 <= i < size
        ],
    )
    if policy_indices is None:
        policy_indices = [
            i
            for i, p in enumerate(log[:size])
            if json.loads(p)["action"] in ("policy.load", "policy.reload") and i < end
        ]
        before = [i for i in policy_indices if i < start]
        policy_indices = before[-1:] + [i for i in policy_indices if i >= start]
    bundle.set_jsonl(
        "policy/versions.jsonl",
        [
            {"index": i, "payload": log[i], "proof": [b64(h) for h in inclusion(genuine, i)]}
            for i in policy_indices
        ],
    )
    last = json.loads(log[policy_indices[-1]])["document"] if policy_indices else ""
    files["policy/policy.toml"] = last.encode()
    files["keys/custody.json"] = b"[]"
    files["audit/public_key.pem"] = key.pem
    files["requirements.md"] = b"# requirements\n"
    files["audit/checkpoint.note"] = witnessed_note(key, head, witnesses or [], origin=origin)
    bundle.manifest = {
        "format": "cofre-evidence/1",
        "vault_version": "1.0",
        "generated_at": "2026-03-02T00:00:10+00:00",
        "generator": "spiffe://cofre/auditor",
        "period": {"from": period[0], "to": period[1]},
        "entries": {"first_index": start, "end_index": end, "count": end - start},
        "covering_head": {"tree_size": size, "root_hash": b64(root)},
        "previous_head": None,
    }
    return bundle


def witness(name: str = "witness.example/w1") -> CosignerKey:
    return CosignerKey.generate(name)


def handover(
    old: AuditKey,
    new: AuditKey,
    log: list[str],
    size: int,
    *,
    cosigners: Sequence[CosignerKey] = (),
    origin: str = ORIGIN,
    timestamp: int = 1_772_300_000,
) -> str:
    """The handover note from `old` to `new` at the genuine head of `size` of `log`,
    signed by both keys (whoever holds the HSM PIN can make one to a key of their own),
    then one cosignature line by each of `cosigners`: the witnesses that took it, which
    an honest witness does only for a new key its operator pinned."""
    root = mth([leaf_hash(p.encode()) for p in log[:size]])
    text = handover_text(Checkpoint(origin, size, root), old.vkey(origin), new.vkey(origin))
    note = handover_note(
        text, old.vkey(origin), old.sign(text.encode()), new.vkey(origin), new.sign(text.encode())
    )
    return note + "".join(w.cosign(text, timestamp).line() for w in cosigners)


def set_handovers(bundle: Bundle, notes: Sequence[str]) -> None:
    """Put `notes` in the bundle's `audit/handovers.jsonl`, as the export does."""
    bundle.set_jsonl("audit/handovers.jsonl", [{"note": note} for note in notes])


def chained(
    log: list[str],
    split: int,
    *,
    key: AuditKey,
    witnesses: list[CosignerKey],
    origins: tuple[str, str] = (ORIGIN, ORIGIN),
    second_policies: list[int] | None = None,
) -> tuple[Bundle, Bundle]:
    """Two bundles of `log` (and a cutoff entry after it) that chain: entries [0,
    split) covered by the head of size split + 1 (entry `split` is the one after the
    first period), then [split, len(log)) with the consistency proof between the two
    heads. `log`'s entry `split` must be the first one at or after 10:00 (`day_log`)."""
    middle = "2026-03-01T10:00:00.000000Z"
    full = [*log, cutoff()]
    first = build(
        full,
        0,
        split,
        size=split + 1,
        key=key,
        witnesses=witnesses,
        period=(PERIOD[0], middle),
        origin=origins[0],
    )
    second = build(
        full,
        split,
        len(log),
        size=len(full),
        key=key,
        witnesses=witnesses,
        period=(middle, PERIOD[1]),
        origin=origins[1],
        policy_indices=second_policies,
    )
    second.manifest["previous_head"] = first.manifest["covering_head"]
    leaves = [leaf_hash(p.encode()) for p in full]
    proof = [b64(h) for h in consistency(leaves, split + 1)]
    second.files["audit/consistency.json"] = json.dumps(
        {"size1": split + 1, "size2": len(full), "proof": proof}
    ).encode()
    return first, second


# Check 6d's synthetic bundles (key registrations and the ceremony starts they need).
REGISTRATION_DAY: Final = "2026-03-01"
REGISTRATION_CEREMONY: Final = "5b8e0f6a-3c2d-4e1f-9a7b-2c3d4e5f6a7b"


def rotation_start(new_version: int, kind: str = "kek") -> str:
    """A `key.rotation.start` of `REGISTRATION_CEREMONY` to `new_version` of `kind`."""
    details = {"kind": kind, "old_version": new_version - 1, "new_version": new_version}
    return payload(
        "key.rotation.start",
        f"{REGISTRATION_DAY}T04:45:00.000000Z",
        key_id=REGISTRATION_CEREMONY,
        details=details,
    )


def verify_log(log: list[str], start: int, tmp_path: Path) -> Report:
    """`log` as a bundle whose period starts at entry `start`, verified (witnesses aside)."""
    bundle = build(log, start, len(log))
    return verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"), bundle.key.pem, unsafe_no_witnesses=True, origin=ORIGIN
    )


def registration_problems(report: Report) -> list[str]:
    """Check 6d's problem lines of `report`."""
    return [p for p in report.problems if p.startswith("key registrations:")]
