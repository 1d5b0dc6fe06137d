"""Check 8: the covering head, and every audit key handover, is cosigned by a quorum of
the witnesses the auditor pins.

The vault's own key signs every head, but whoever holds the HSM PIN can rebuild the log
and re-sign every head, and the other checks then pass. A witness (c2sp.org/tlog-witness)
cosigns a checkpoint only when it extends the last one it cosigned, so a rewritten or
rolled-back log cannot get a cosignature. `audit/checkpoint.note` is the covering head
as a C2SP signed note: the vault's signature (type 0x02) and the witnesses'
cosignature/v1 lines. This check requires that its text is the covering head's
checkpoint and that at least `quorum` distinct pinned witness keys cosigned it.

A handover of the audit key needs the same quorum (review 29 M3). It is signed by the
old and the new key, but the old key lives on the vault's HSM behind the PIN that signs
everything else: one PIN holder can hand the log over to a software key of their own and
sign every later head and manifest with it. A witness's cosignature/v1 signs the
checkpoint's text, not the log's signature, so the covering head's cosignatures verify
just as well on that text re-signed by the rogue key. A Cofre witness cosigns a
handover checkpoint only to a new key its own operator pinned (`cofre witness
trust-key`): that cosignature (over the whole checkpoint, its ``cofre-key-handover``
line included, as c2sp.org/tlog-cosignature specifies) is the one thing the PIN holder
cannot make. The bundle carries it as cosignature lines of the handover's note in
`audit/handovers.jsonl`. It also cosigns no other handover than the one it followed
(review 36: not one from another key to the key it trusts now). A generic cosignature/v1
witness pinned to a key cosigns every checkpoint that key signs and ignores extension
lines, so its cosignature of a handover says nothing of the key change: auditors pin
Cofre witnesses and, when they can, the chain's first key (docs/auditor-guide.md).

It fails closed: with no witness key pinned the bundle is not VERIFIED (the caller may
skip it only by name, `unsafe_no_witnesses`, and the report says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from cofre_evidence_verifier.bundle import Files, Heads
from cofre_evidence_verifier.errors import NoteError
from cofre_evidence_verifier.heads import HANDOVERS
from cofre_evidence_verifier.keychain import Handover
from cofre_evidence_verifier.note import (
    ALG_COSIGNATURE_V1,
    NoteSignature,
    VerifierKey,
    minority_quorum,
    parse_note,
    require_quorum,
)
from cofre_evidence_verifier.report import Report

CHECKPOINT_NOTE: Final = "audit/checkpoint.note"
_NOT_COSIGNER: Final = "a witness key is a cosignature/v1 key (type 0x04), not"


def read_witness_keys(texts: Sequence[str]) -> list[VerifierKey]:
    """Return the witnesses' verifier keys (one vkey per text). Raises `NoteError` for a
    malformed vkey and for any key that is not a cosignature/v1 key (type 0x04): a plain
    Ed25519 or the vault's own ECDSA key pinned by mistake must not stand for a witness."""
    keys = [VerifierKey.parse(text) for text in texts]
    for key in keys:
        if key.algorithm != ALG_COSIGNATURE_V1:
            raise NoteError(f"{_NOT_COSIGNER} {key.name} (type 0x{key.algorithm:02x})")
    return keys


def _when(seconds: int) -> str:
    """A cosignature's time as a person reads it; one past year 9999 as its seconds (a
    cosignature/v1 timestamp may be up to 2^63)."""
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        return f"{seconds} s after 1970"


def _check_handovers(
    handovers: Sequence[Handover],
    witness_keys: Sequence[VerifierKey],
    quorum: int,
    report: Report,
) -> str | None:
    """Return what the report says of the handovers' witnesses ("" when there are none)
    if each of `handovers` carries `quorum` valid cosignatures by distinct keys among
    `witness_keys`; report each one that does not, and return None."""
    said = []
    for handover in handovers:
        # The note as the bundle carries it: the vault's two signatures, then the
        # witnesses' cosignatures of the same text (`keychain.parse_handover` read it).
        text, signatures = parse_note(handover.note)
        try:
            valid = require_quorum(text, signatures, witness_keys, quorum)
        except NoteError as exc:
            report.fail(
                f"{HANDOVERS}: the key handover at size {handover.size} is not witnessed: "
                f"{exc} (a witness cosigns a handover only to a key its operator pinned; "
                "both keys' signatures prove only that someone with the HSM PIN signed "
                "it: an unauthorised key substitution)"
            )
            continue
        names = ", ".join(f"{v.key.name} at {_when(v.timestamp or 0)}" for v in valid)
        said.append(
            f"; key handover at size {handover.size} cosigned by {len(valid)} of the "
            f"{quorum} pinned witnesses required ({names})"
        )
    return None if len(said) < len(handovers) else "".join(said)


def _covering_note(
    files: Files, heads: Heads, size: int, report: Report
) -> tuple[str, list[NoteSignature]] | None:
    """The text and signatures of `audit/checkpoint.note` if it is the covering head
    `size`'s checkpoint as a signed note; else None, reported."""
    head = heads.get(size)
    if head is None:
        report.fail(f"{CHECKPOINT_NOTE}: the covering head {size} is not a verified head")
        return None
    data = files.get(CHECKPOINT_NOTE)
    if data is None:
        report.fail(
            f"{CHECKPOINT_NOTE}: missing: the bundle carries no witnessed checkpoint, so "
            "nothing but the vault's own key vouches for its log"
        )
        return None
    try:
        text, signatures = parse_note(data)
    except NoteError as exc:
        report.fail(f"{CHECKPOINT_NOTE}: not a signed note: {exc}")
        return None
    if text != str(head["checkpoint"]):
        report.fail(
            f"{CHECKPOINT_NOTE}: its checkpoint is not the covering head {size}'s checkpoint"
        )
        return None
    return text, signatures


def check_witnesses(
    files: Files,
    manifest: dict[str, object],
    heads: Heads,
    *,
    witness_keys: Sequence[VerifierKey],
    quorum: int,
    report: Report,
    handovers: Sequence[Handover] = (),
) -> None:
    """Pass `witnesses` when the covering head and each of the key chain's `handovers`
    carry `quorum` valid cosignatures by distinct keys among `witness_keys`; otherwise
    report what is missing by name."""
    # Only a witness's cosignature/v1 (c2sp.org/tlog-cosignature) proves a witness saw
    # the head; the vault's own type-0x02 key pinned as a "witness" would vouch for
    # itself (review 29). Such a key is named and never counted.
    for key in witness_keys:
        if key.algorithm != ALG_COSIGNATURE_V1:
            report.fail(f"{_NOT_COSIGNER} {key.name} (type 0x{key.algorithm:02x}): not counted")
    witness_keys = [k for k in witness_keys if k.algorithm == ALG_COSIGNATURE_V1]
    problem = minority_quorum(witness_keys, quorum)
    if problem is not None:
        report.fail(problem)
        return
    handovers_said = _check_handovers(handovers, witness_keys, quorum, report)
    covering = manifest.get("covering_head")
    size = int(covering.get("tree_size", -1)) if isinstance(covering, dict) else -1
    note = _covering_note(files, heads, size, report)
    if note is None:
        return
    text, signatures = note
    try:
        valid = require_quorum(text, signatures, witness_keys, quorum)
    except NoteError as exc:
        report.fail(
            f"{CHECKPOINT_NOTE}: covering head {size} is not witnessed: {exc} (a witness "
            "refuses a head that does not extend the one it cosigned: a rewritten or "
            "rolled-back log gets none)"
        )
        return
    if handovers_said is None:
        return  # each unwitnessed handover is reported
    names = ", ".join(f"{v.key.name} at {_when(v.timestamp or 0)}" for v in valid)
    report.passed(
        "witnesses",
        f"covering head {size} cosigned by {len(valid)} of the {quorum} pinned witnesses "
        f"required ({names}){handovers_said}",
    )
