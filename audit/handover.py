"""Audit signing key handovers: where the log's key changes, signed by both keys.

IN PCI SCOPE. After a dual-control rotation of the audit key (`vault.audit_rotation`)
the log's newest signed head is re-stated as a handover checkpoint (the format is
`cofre_evidence_verifier.keychain`'s: a ``cofre-key-handover <old vkey> <new vkey>``
extension line, one signature by each key) and stored in ``audit_handovers``. Heads up
to its size stay signed by the old key; every later head is signed by the new one. The
newest row says which key signs now, but only once the rows are verified as one chain
from one of the vault's registered audit keys (`verified_label`): a database writer cannot pick the
key (a bigger ``tree_size`` naming a retired, unregistered or planted key signs
nothing). Every verifier follows the rows from the key its auditor pinned (`key_chain`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final, NamedTuple

from sqlalchemy import Connection, insert, select, text

from audit.errors import AuditVerificationFailed, NoteError
from audit.heads import SignedTreeHead, TreeHeadSigner, log_verifier_key
from audit.note import KeyChain, handover_note, handover_text, parse_checkpoint, parse_handover
from audit.schema import audit_handovers
from audit.sequencer import SEQUENCER_LOCK_KEY
from cofre.errors import CofreError
from cofre_evidence_verifier.keychain import spki_der

HANDOVER_ACTION: Final = "audit.key.handover"


def hold_sequencer_lock(connection: Connection) -> None:
    """Wait for the sequencer's lock in `connection`'s transaction (PostgreSQL; SQLite
    serialises writers already). Until the transaction ends no node signs a head."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SEQUENCER_LOCK_KEY})


def sign_handover(head: SignedTreeHead, old: TreeHeadSigner, new: TreeHeadSigner) -> str:
    """Return the handover note at `head` from `old`'s key to `new`'s, signed by both.
    Raises `NoteError` if the result does not verify (it is checked as a verifier
    would before anything is stored)."""
    old_key = log_verifier_key(head, old.public_key_pem())
    new_key = log_verifier_key(head, new.public_key_pem())
    body = handover_text(parse_checkpoint(head.checkpoint), old_key, new_key)
    note = handover_note(body, old_key, old.sign(body.encode()), new_key, new.sign(body.encode()))
    parse_handover(note)
    return note


def record_handover(connection: Connection, tree_size: int, label: str, note: str) -> None:
    """Store the handover `note` at `tree_size` to key `label` in `connection`'s
    transaction."""
    connection.execute(
        insert(audit_handovers).values(
            tree_size=tree_size, key_label=label, note=note, recorded_at=datetime.now(UTC)
        )
    )


def handover_notes(connection: Connection) -> list[str]:
    """Every stored handover note, oldest first."""
    return [
        str(note)
        for note in connection.execute(
            select(audit_handovers.c.note).order_by(audit_handovers.c.tree_size)
        ).scalars()
    ]


class HandoverRow(NamedTuple):
    """One stored handover, as read (unverified)."""

    tree_size: int
    key_label: str
    note: str


def handover_rows(connection: Connection) -> tuple[HandoverRow, ...]:
    """Every stored handover row, oldest first, unverified (see `verified_label`)."""
    rows = connection.execute(
        select(
            audit_handovers.c.tree_size, audit_handovers.c.key_label, audit_handovers.c.note
        ).order_by(audit_handovers.c.tree_size)
    ).all()
    return tuple(HandoverRow(int(r.tree_size), str(r.key_label), str(r.note)) for r in rows)


def verified_label(
    rows: tuple[HandoverRow, ...],
    anchors: Sequence[bytes],
    public_key_pem: Callable[[str], bytes],
) -> str | None:
    """The label of the audit key the newest handover introduced (None: no handover),
    after checking the rows are one chain starting at one of the vault's own audit keys
    `anchors` (PEM: the registered keys on the token), each note signed by both its keys
    at the row's size, and that each row's label names the key its note introduces
    (`public_key_pem(label)`, read from the HSM). Raises `AuditVerificationFailed`
    naming the row: the caller signs nothing (a row a database writer planted never
    chooses the signing key, and there is no fallback to another key)."""
    if not rows:
        return None
    try:
        chain = KeyChain.build(anchors, [row.note for row in rows])
        first = {spki_der(pem) for pem in anchors}
    except NoteError as exc:
        raise AuditVerificationFailed(
            f"audit signing key: the stored key handovers do not verify ({exc}): nothing "
            "is signed until audit_handovers is repaired"
        ) from None
    if chain.keys[0] not in first:
        raise AuditVerificationFailed(
            "audit signing key: the stored key handovers do not start from one of the "
            "vault's registered audit keys: nothing is signed until audit_handovers is "
            "repaired"
        )
    for row, handover in zip(rows, chain.handovers, strict=True):
        if handover.size != row.tree_size:
            raise AuditVerificationFailed(
                f"audit signing key: the handover row at tree size {row.tree_size} holds "
                f"a note at size {handover.size}: nothing is signed"
            )
        try:
            actual = spki_der(public_key_pem(row.key_label))
        except (NoteError, CofreError) as exc:
            raise AuditVerificationFailed(
                f"audit signing key: the handover at tree size {row.tree_size} names key "
                f"{row.key_label!r}, which cannot be read ({exc}): nothing is signed"
            ) from None
        if actual != handover.new.public:
            raise AuditVerificationFailed(
                f"audit signing key: the handover row at tree size {row.tree_size} names "
                f"key {row.key_label!r}, not the key its note hands over to: nothing is "
                "signed"
            )
    return rows[-1].key_label


def key_chain(connection: Connection, public_key_pem: bytes) -> KeyChain:
    """The log's key chain from the stored handovers, anchored at the pinned PEM key.
    Raises `AuditVerificationFailed` naming what is wrong (a forged or broken handover,
    a pinned key that is not on the chain)."""
    try:
        return KeyChain.build([public_key_pem], handover_notes(connection))
    except NoteError as exc:
        raise AuditVerificationFailed(f"audit key chain: {exc}") from None
