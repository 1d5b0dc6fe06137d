"""Audit signing key handovers: where the log's key changes, signed by both keys.

IN PCI SCOPE. After a dual-control rotation of the audit key (`vault.audit_rotation`)
the log's newest signed head is re-stated as a handover checkpoint (the format is
`cofre_evidence_verifier.keychain`'s: a ``cofre-key-handover <old vkey> <new vkey>``
extension line, one signature by each key) and stored in ``audit_handovers``. Heads up
to its size stay signed by the old key; every later head is signed by the new one. The
newest row is the one place every node reads which key signs now (never a cache), and
every verifier follows the rows from the key its auditor pinned (`key_chain`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from sqlalchemy import Connection, insert, select, text

from audit.errors import AuditVerificationFailed, NoteError
from audit.heads import SignedTreeHead, TreeHeadSigner, log_verifier_key
from audit.note import KeyChain, handover_note, handover_text, parse_checkpoint, parse_handover
from audit.schema import audit_handovers
from audit.sequencer import SEQUENCER_LOCK_KEY

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


def current_label(connection: Connection) -> str | None:
    """The label of the audit key the newest handover introduced (None: no handover)."""
    return connection.execute(
        select(audit_handovers.c.key_label).order_by(audit_handovers.c.tree_size.desc()).limit(1)
    ).scalar()


def key_chain(connection: Connection, public_key_pem: bytes) -> KeyChain:
    """The log's key chain from the stored handovers, anchored at the pinned PEM key.
    Raises `AuditVerificationFailed` naming what is wrong (a forged or broken handover,
    a pinned key that is not on the chain)."""
    try:
        return KeyChain.build([public_key_pem], handover_notes(connection))
    except NoteError as exc:
        raise AuditVerificationFailed(f"audit key chain: {exc}") from None
