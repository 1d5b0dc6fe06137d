"""Checking the stored log against the witnesses: `cofre audit verify --witness-key`.

IN PCI SCOPE. `AuditStore.verify` proves the entries match the vault's own signed heads;
that is worth nothing against someone holding the HSM PIN, who can rebuild and re-sign
every head. A witness cosigns a head only when it extends the last one it cosigned, so:
every stored cosignature by a pinned witness must verify on its head (a rewritten head
no longer matches what was cosigned), and the newest head must carry a quorum of them
(a rewritten or rolled-back log gets no new cosignature: the witness refuses it).
Every audit key handover must carry the quorum too: its two keys' signatures prove
only that someone with the HSM PIN signed it, while a witness cosigns a handover only to
a key its own operator pinned (review 29 M3).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine

from audit.errors import AuditVerificationFailed, NoteError
from audit.heads import SignedTreeHead
from audit.note import (
    VerifierKey,
    minority_quorum,
    parse_checkpoint,
    parse_note,
    require_quorum,
    verify_note,
)
from audit.publisher import cosignatures_of
from audit.schema import audit_handover_cosignatures
from audit.store import AuditStore


def verify_witnessed(
    engine: Engine, heads: Sequence[SignedTreeHead], witnesses: Sequence[VerifierKey], quorum: int
) -> int:
    """Return the number of heads with a valid cosignature by a pinned witness. Raises
    `AuditVerificationFailed` naming the head and the witness when a stored cosignature
    does not verify, or the newest head or an audit key handover lacks a quorum."""
    if not heads:
        raise AuditVerificationFailed("no signed tree head: nothing was witnessed")
    # The operator chooses which witnesses the publisher reaches: with a minority
    # quorum one kept behind cosigns a rewrite (review 30).
    problem = minority_quorum(witnesses, quorum)
    if problem is not None:
        raise AuditVerificationFailed(problem)
    _require_witnessed_handovers(engine, witnesses, quorum)
    witnessed = 0
    for head in heads:
        signatures = cosignatures_of(engine, head.tree_size)
        for key in witnesses:
            for signature in signatures:
                if not key.matches(signature):
                    continue
                try:
                    key.verify(head.checkpoint, signature.signature)
                except NoteError:
                    raise AuditVerificationFailed(
                        f"tree head {head.tree_size}: the cosignature by witness {key.name} "
                        "does not verify: the head was rewritten after the witness cosigned it"
                    ) from None
                witnessed += 1
    latest = heads[-1]
    try:
        require_quorum(
            latest.checkpoint, cosignatures_of(engine, latest.tree_size), witnesses, quorum
        )
    except NoteError as exc:
        raise AuditVerificationFailed(
            f"the newest tree head {latest.tree_size} is not witnessed: {exc} (a witness "
            "refuses a head that does not extend the one it cosigned: a rewritten or "
            "rolled-back log, or the witnesses have not been reached yet)"
        ) from None
    return witnessed


def _require_witnessed_handovers(
    engine: Engine, witnesses: Sequence[VerifierKey], quorum: int
) -> None:
    """Raise `AuditVerificationFailed` naming the first audit key handover that lacks
    `quorum` valid stored cosignatures by the pinned `witnesses`."""
    for note in AuditStore(engine).handover_notes():
        size = None
        try:
            text = parse_note(note)[0]
            size = parse_checkpoint(text).size
            stored = cosignatures_of(engine, size, audit_handover_cosignatures)
            require_quorum(text, stored, witnesses, quorum)
        except NoteError as exc:
            at = "" if size is None else f" at size {size}"
            raise AuditVerificationFailed(
                f"the audit key handover{at} is not witnessed: {exc} (a witness cosigns a "
                "handover only to a key its operator pinned; until then, or for a handover "
                "to a key no witness operator pinned, it proves only that someone with the "
                "HSM PIN signed it)"
            ) from None


def check_witness_view(
    store: AuditStore, note: str, witness: VerifierKey, log_keys: Sequence[VerifierKey]
) -> int:
    """Return the size of the witness's latest cosigned checkpoint `note` (what the
    witness serves) after checking this log still holds it: the cosignature verifies
    with the pinned `witness` key, the vault's signature with one of `log_keys`, and the
    log's first `size` entries hash to its root. Raises `AuditVerificationFailed`
    naming the witness when the log is shorter (entries lost: a restore, a rollback) or
    differs (rewritten, forked)."""
    try:
        text, signatures = parse_note(note)
        require_quorum(text, signatures, [witness], 1)
        verify_note(text, signatures, log_keys)
        checkpoint = parse_checkpoint(text)
    except NoteError as exc:
        raise AuditVerificationFailed(
            f"witness {witness.name}: its latest checkpoint does not verify: {exc}"
        ) from None
    size = store.size()
    if size < checkpoint.size:
        raise AuditVerificationFailed(
            f"witness {witness.name} has cosigned size {checkpoint.size}, but this log has "
            f"{size} entries: entries {size} to {checkpoint.size - 1} were lost (a restore "
            "from an older backup, a rollback, or tampering)"
        )
    if checkpoint.size and store.root_at(checkpoint.size) != checkpoint.root:
        raise AuditVerificationFailed(
            f"witness {witness.name} has cosigned size {checkpoint.size} with another root: "
            "this log's first entries were rewritten or forked since"
        )
    return checkpoint.size
