"""Rotation of the audit signing key under dual control, ending in a handover checkpoint.

IN PCI SCOPE, holds keys (PCI DSS 3.6.1.2, 3.6.4, 3.7.4). The ceremony is `vault.rotation`'s
(proposal, approval by another officer, self-approval denied and audited); this module
is its last step for kind ``audit``, run in the approving transaction:

1. hold the sequencer's lock (no node signs a head until the transaction ends);
2. create ``cofre-audit-v<N+1>`` in the HSM (EC P-256, sensitive, never extractable) and
   register it (`key.register`), refusing a key already under that label (planted);
3. check the newest signed head (its signature under the current key, its root against
   the tree the vault computes from its own rows: the database is not trusted to hand
   the two keys a checkpoint to sign), then sign it as a handover checkpoint with the
   old key AND the new one (`audit.handover`), check it as a verifier would, store it,
   and write an ``audit.key.handover`` entry with the note's SHA-256;
4. complete the ceremony. From the commit on, every node's signer reads the new key
   from the stored handover and signs every later head with it.

The old key stays on the token: its public half verifies the heads it signed (evidence
bundles carry every handover and the public keys). It signs nothing more; retire it when
its cryptoperiod ends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, select, update

from audit.errors import AuditError
from audit.handover import (
    HANDOVER_ACTION,
    hold_sequencer_lock,
    record_handover,
    sign_handover,
)
from audit.heads import SignedTreeHead, verify_tree_head
from audit.log import AuditEvent, AuditLog, HexDigest, Outcome
from audit.schema import audit_heads
from audit.sequencer import load_compact_range, tree_size
from hsm.keys import KeyHierarchy, KeyKind, key_label, parse_key_label
from hsm.provider import HSMProvider
from vault._ceremony_guards import proposal_mark
from vault._signed_registration import ceremony_document
from vault.ceremony import CeremonyState
from vault.errors import CeremonyError
from vault.key_registry import KeyRegistry
from vault.signing import HSMTreeHeadSigner
from vault.storage.schema import key_ceremonies


class AuditKeyRotation:
    """Carries out an approved ``audit`` ceremony; see the module docstring."""

    def __init__(
        self,
        provider: HSMProvider,
        registry: KeyRegistry,
        audit: AuditLog,
        clock: Callable[[], datetime],
    ) -> None:
        self._provider = provider
        self._registry = registry
        self._audit = audit
        self._clock = clock

    def _event(
        self, connection: Connection, actor: str, action: str, key: str, details: dict[str, Any]
    ) -> None:
        self._audit.append(
            connection,
            AuditEvent(
                action=action, outcome=Outcome.SUCCESS, actor=actor, key_id=key, details=details
            ),
        )

    def rotate(
        self,
        connection: Connection,
        row: Row[Any],
        approver: str,
        created: list[str] | None = None,
    ) -> None:
        """Create the new audit key, sign and store the handover, complete ceremony
        `row`, all in `connection`'s transaction; the new key's label is added to
        `created` (the caller destroys it if the transaction fails). Raises
        `CeremonyError` when there is no signed head yet, the stored handovers or the
        newest head do not verify, or the next label is already on the token."""
        hold_sequencer_lock(connection)
        signer = HSMTreeHeadSigner(self._provider, registry=self._registry)
        try:
            handed = signer.handed_over_label(connection)
        except AuditError as exc:
            raise CeremonyError(f"no rotation: {exc}") from None
        old_label = handed or self._registry.current_label(KeyKind.AUDIT)
        parsed = parse_key_label(old_label)
        if parsed is None:  # pragma: no cover - labels come from key_label
            raise CeremonyError(f"the current audit key {old_label!r} is not a Cofre label")
        newest = max([parsed[1], *self._registry.versions(KeyKind.AUDIT)])
        new_label = key_label(KeyKind.AUDIT, newest + 1)
        head = self._newest_head(connection)
        self._check_head(connection, head, old_label)
        if self._provider.has_key(new_label):
            raise CeremonyError(
                f"a key labelled {new_label!r} is already on the token and not in the key "
                "registry: investigate and destroy it, then approve again"
            )
        KeyHierarchy(self._provider).create(KeyKind.AUDIT, newest + 1)
        if created is not None:
            created.append(new_label)
        note = sign_handover(
            head,
            HSMTreeHeadSigner(self._provider, old_label),
            HSMTreeHeadSigner(self._provider, new_label),
        )
        record_handover(connection, head.tree_size, new_label, note)
        now = self._clock()
        connection.execute(
            update(key_ceremonies)
            .where(key_ceremonies.c.id == row.id)
            .values(
                state=CeremonyState.COMPLETED.value,
                old_version=parsed[1],
                new_version=newest + 1,
                completed_at=now,
            )
        )
        # Next to the start, which takes its time (`AuditLog.append`'s hold): written
        # before the handover's two signatures (HSM round trips), it let another node's
        # entries into the log between the two, dated after the start (review 37).
        # With the officers' signed requests: only then does the registry take a version
        # 2 or later (session 40: a PIN holder's hand-written registration was taken).
        self._registry.register(
            connection,
            new_label,
            actor=approver,
            how=f"created by key ceremony {row.id}",
            ceremony=row.id,
            document=ceremony_document(connection, row),
        )
        self._event(
            connection,
            approver,
            "key.rotation.start",
            row.id,
            {"kind": "audit", "old_version": parsed[1], "new_version": newest + 1, "records": 0}
            | proposal_mark(row),  # the start's proposal, looked for by the next start
        )
        self._event(
            connection,
            approver,
            HANDOVER_ACTION,
            new_label,
            {
                "ceremony": row.id,
                "old_key": old_label,
                "new_key": new_label,
                "tree_size": head.tree_size,
                "note_sha256": HexDigest(hashlib.sha256(note.encode()).hexdigest()),
            },
        )
        self._event(
            connection,
            "cofre rotation",
            "key.rotation.complete",
            row.id,
            {"retired_version": parsed[1], "old_key_kept_for_verification": True},
        )

    def _check_head(self, connection: Connection, head: SignedTreeHead, label: str) -> None:
        """Return if `head` is signed by the current key `label` and its root is the
        root of the tree the vault computes from its stored nodes; else the two keys
        would sign whatever a database writer put in ``audit_heads``."""
        try:
            verify_tree_head(head, self._provider.public_key_pem(label))
            # The root the sequencer computes, in this transaction (under its lock).
            root = (
                load_compact_range(connection, head.tree_size).root()
                if head.tree_size <= tree_size(connection)
                else None
            )
        except AuditError as exc:
            raise CeremonyError(
                f"no rotation: the newest signed tree head does not verify ({exc})"
            ) from None
        if root != head.root_hash:
            raise CeremonyError(
                f"no rotation: the newest signed tree head (size {head.tree_size}) states a "
                "root that is not the root of the vault's audit tree (altered head)"
            )

    @staticmethod
    def _newest_head(connection: Connection) -> SignedTreeHead:
        found = connection.execute(
            select(audit_heads).order_by(audit_heads.c.tree_size.desc()).limit(1)
        ).first()
        if found is None:
            raise CeremonyError(
                "the audit log has no signed tree head yet: there is nothing to hand over"
            )
        return SignedTreeHead(
            tree_size=int(found.tree_size),
            root_hash=bytes(found.root_hash),
            timestamp_ms=int(found.timestamp_ms),
            key_id=str(found.key_id),
            checkpoint=str(found.checkpoint),
            signature=bytes(found.signature),
        )
