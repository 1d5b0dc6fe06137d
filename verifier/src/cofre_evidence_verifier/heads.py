"""Check 3: every signed tree head in `audit/heads.jsonl` verifies with the audit key in
force at its size (`keychain`: the pinned key, or the key a handover in
`audit/handovers.jsonl` introduced), and its checkpoint text states its own size and
root. Every head and handover is a checkpoint of one log: one origin (line 0), the one
the auditor pinned if they did (the `origin` check; `chain` passes it for a bundle
whose previous bundle pins the log instead). A head at a handover's size must state
the handover's root: the new key vouches for the old one only up to the tree it saw,
so a leaked old key cannot sign another tree at that size."""

from __future__ import annotations

import base64
from typing import Any

from cofre_evidence_verifier.bundle import Files, Heads, json_lines, signature_verifies
from cofre_evidence_verifier.errors import NoteError
from cofre_evidence_verifier.keychain import KeyChain
from cofre_evidence_verifier.note import ALG_ECDSA, parse_checkpoint
from cofre_evidence_verifier.report import Report

HANDOVERS = "audit/handovers.jsonl"


def _build_chain(public_key_pem: bytes, lines: list[dict[str, Any]]) -> KeyChain:
    """The key chain of the handover `lines`. Raises `NoteError` when they do not make
    one of the vault's audit keys."""
    notes = [line.get("note") for line in lines]
    for number, note in enumerate(notes, 1):
        if not isinstance(note, str):
            raise NoteError(f"handover {number} has no note")
    chain = KeyChain.build([public_key_pem], [str(note) for note in notes])
    # The vault's audit key lives in the HSM as ECDSA (type 0x02): a handover to a key
    # of another type is no rotation of it (and has no PEM to check heads with).
    for handover in chain.handovers:
        if {handover.old.algorithm, handover.new.algorithm} != {ALG_ECDSA}:
            raise NoteError(
                f"the key handover at size {handover.size} names a key that is not ECDSA "
                "(type 0x02), as the vault's audit key is"
            )
    return chain


def read_chain(files: Files, public_key_pem: bytes, report: Report) -> KeyChain:
    """Return the audit key chain from the bundle's handovers anchored at the pinned key.
    When they do not make one, that is reported (the bundle fails) and the chain of the
    pinned key alone is returned, so the other checks still report what they find."""
    try:
        chain = _build_chain(
            public_key_pem, json_lines(files.get(HANDOVERS, b""), HANDOVERS, report)
        )
    except NoteError as exc:
        report.fail(f"{HANDOVERS}: {exc}")
        return KeyChain.build([public_key_pem], [])
    if chain.handovers:
        report.checks.append(
            f"key chain: {len(chain.handovers)} audit key handover(s) signed by both keys, "
            "anchored at the pinned key"
        )
    return chain


def _is_head(head: dict[str, Any]) -> bool:
    size = head.get("tree_size")
    return (
        isinstance(size, int)
        and not isinstance(size, bool)
        and all(isinstance(head.get(k), str) for k in ("checkpoint", "root_hash", "signature"))
    )


def _signature(encoded: str) -> bytes:
    """The signature bytes, or none (which do not verify) if it is not base64."""
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError:  # binascii.Error is one
        return b""


def _handover_origin(
    chain: KeyChain, origin: str | None, report: Report
) -> tuple[str | None, str, bool]:
    """The log's origin, unless pinned as the handovers state it (their keys bear its
    name, `keychain`), where it comes from, and whether every handover is of it; report
    each handover of another log."""
    source, same = "the origin pinned", True
    for handover in chain.handovers:
        if origin is None:
            origin, source = handover.checkpoint.origin, "the log of the key handovers"
        elif handover.checkpoint.origin != origin:
            same = False
            report.fail(
                f"{HANDOVERS}: the key handover at size {handover.size} is of log "
                f"{handover.checkpoint.origin}, not of log {origin} ({source})"
            )
    return origin, source, same


def check_heads(
    files: Files, chain: KeyChain, report: Report, *, origin: str | None = None
) -> Heads:
    """Return the heads that verify, by tree size; report each one that does not. Every
    head, and every handover, must be a checkpoint of one log: `origin` when the auditor
    pinned it, else the log the handovers or the first head name (the audit key may
    sign checkpoints of other logs too, which witnesses also cosign: a staging or
    disaster-recovery log's checkpoints must not stand for this one's)."""
    heads: Heads = {}
    forked: set[int] = set()
    handovers = {handover.size: handover for handover in chain.handovers}
    pinned = origin is not None
    origin, source, same_log = _handover_origin(chain, origin, report)
    for head in json_lines(files.get("audit/heads.jsonl", b""), "audit/heads.jsonl", report):
        size, root_b64 = head.get("tree_size"), head.get("root_hash")
        if not _is_head(head):
            report.fail(
                "audit/heads.jsonl: a line is not a signed head (an integer tree_size; "
                "checkpoint, root_hash and signature strings)"
            )
            continue
        try:
            checkpoint = parse_checkpoint(head["checkpoint"])
        except NoteError as exc:
            report.fail(f"audit/heads.jsonl: head {size}: not a checkpoint ({exc})")
            continue
        lines = str(head["checkpoint"]).split("\n")
        if checkpoint.size != size or lines[2] != root_b64:
            report.fail(
                f"audit/heads.jsonl: head {size}: checkpoint does not state its size and root"
            )
            continue
        if not signature_verifies(
            chain.pem_for(size), _signature(head["signature"]), head["checkpoint"].encode()
        ):
            report.fail(
                f"audit/heads.jsonl: head {size}: signature does not verify with "
                f"{chain.describe(size)} (signed by another key, one no valid handover "
                "introduced, or altered)"
            )
            continue
        if origin is None:  # taken from a head only once its signature verified
            origin, source = checkpoint.origin, f"the log of head {size}"
        if checkpoint.origin != origin:
            same_log = False
            report.fail(
                f"audit/heads.jsonl: head {size}: a checkpoint of log {checkpoint.origin}, "
                f"not of log {origin} ({source})"
            )
            continue
        handover = handovers.get(size)
        if handover is not None and base64.b64decode(root_b64) != handover.checkpoint.root:
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
    log = f" of log {origin}" if origin is not None else ""
    report.passed("heads", f"{len(heads)} signed tree heads{log} verify")
    if pinned and same_log:
        report.passed("origin", f"every checkpoint is of log {origin}, the origin pinned")
    return heads
