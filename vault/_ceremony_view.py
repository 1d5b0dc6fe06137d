"""The view of a key ceremony an officer sees (`vault.rotation.KeyRotation`'s status,
list and the answers of its actions).

IN PCI SCOPE (key management): reads a ceremony's rows; holds no key.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, select

from cofre.redaction import mask_pan_like
from policies.engine import PolicyEngine
from vault._ceremony_guards import (
    counting_now,
    proposal_life,
    replay_refusal,
    revoked_officers,
)
from vault._rotation_unreadable import UNREADABLE_ACTION, unreadable_tokens
from vault._signed_registration import proposed_registration
from vault.approval_proof import proposal_expired
from vault.ceremony import Ceremony, CeremonyState, RotationKind
from vault.storage.database import as_utc
from vault.storage.schema import key_approvals


def ceremony_view(
    connection: Connection,
    row: Row[Any],
    *,
    policy: PolicyEngine,
    now: datetime,
    ttl: timedelta,
    needed: int,
    unsigned: bool,
    authorities: Collection[str] | None,
    revoked: Callable[[str], bool] | None = None,
) -> Ceremony:
    """Ceremony `row` as officers see it at `now`: a pending one past its life (its row's
    expiry or its signed proposal's `ttl`) is expired, and of its approvers, those whose
    approval would count under `policy` (`counting_now`). Given `revoked` (the CRL in
    force), none counts while the proposer or a counted approver acted with a revoked
    certificate, since the ceremony then takes no approval (`revoked_officers`): the
    officers see it before one of them tries (session 29). A pending ceremony the audit
    log shows already started or cancelled (`replay_refusal`, the approval's own check)
    counts nobody and carries why in `approval_refused` (session 32)."""
    approvals = key_approvals.c
    given = connection.execute(
        select(approvals.officer, approvals.keyid, approvals.proof)
        .where(approvals.ceremony_id == row.id)
        .order_by(approvals.approved_at)
    ).all()
    approvers = [officer for officer, _, _ in given]
    counting = approvers
    state = row.state
    refused: str | None = None
    expires = as_utc(row.expires_at)
    life = proposal_life(now, ttl)  # signed: the row's expiry can move
    if state == CeremonyState.PENDING and (
        (expires is not None and expires <= now) or proposal_expired(row.proposer_proof, life)
    ):
        state = CeremonyState.EXPIRED.value
    elif state == CeremonyState.PENDING:
        counting = counting_now(
            policy,
            row,
            given,
            unsigned=unsigned,
            authorities=authorities,
            signed_within=life,
        )
        if revoked is not None and revoked_officers(connection, row, counting, revoked):
            counting = []
        # A ceremony the log shows already started or cancelled takes no approval: say
        # so, and why, with the approval's own check (three reads of the log through
        # migration 0021's partial indexes, for pending ceremonies only).
        replayed = replay_refusal(connection, row)
        if replayed is not None:
            refused, counting = replayed.reason, []
    # Rows a running rotation could not read, which keep it from completing (rot38).
    stuck = unreadable_tokens(connection, row)
    return Ceremony(
        id=row.id,
        kind=row.kind,
        state=state,
        proposer=row.proposer,
        approvers=approvers,
        approvals_needed=needed,
        approvals_counting=counting,
        created_at=as_utc(row.created_at) or row.created_at,
        expires_at=expires or row.expires_at,
        old_version=row.old_version,
        new_version=row.new_version,
        progress_done=row.progress_done,
        progress_total=row.progress_total,
        destroy_after=as_utc(row.destroy_after),
        completed_at=as_utc(row.completed_at),
        approval_refused=refused,
        stuck_tokens=stuck,
        stuck_action=UNREADABLE_ACTION if stuck else None,
        registers=_registers(row),
    )


def _registers(row: Row[Any]) -> dict[str, str] | None:
    """The label, CKA_ID and check value register ceremony `row`'s signed proposal names
    (what an approval of it registers: atk49o), card-like digits masked as the log masks
    them; None for another kind or a proposal not readable as one."""
    if row.kind != RotationKind.REGISTER.value:
        return None
    named = proposed_registration(row.proposer_proof)
    return None if named is None else {k: mask_pan_like(v) for k, v in named.items()}
