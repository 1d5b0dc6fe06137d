"""No key ceremony action by an officer who has not acknowledged key custody (PCI DSS
4.0.1 req. 3.7.8: custodians acknowledge their responsibilities; review of session 34:
an officer who never signed the statement proposed and approved a rotation, and it ran).

IN PCI SCOPE (key management). `vault.rotation` asks this before it counts a proposal or
an approval. An acknowledgement is *in force* for an officer when its recorded statement
(`vault.custody`, in the audit log) is the statement the vault asks for now, dates and
key versions aside:

- its type and its text are the current ones (`STATEMENT_TYPE`, `STATEMENT_TEXT`): a
  new text comes with a new type, and every officer signs it again;
- it names the officer and the role the policy gives them now (a changed role is a
  changed responsibility);
- its signature verifies under the MFA key the policy registers for them now (a
  replaced token, lost or stolen, signs again; as `vault._ceremony_guards.is_officer`
  drops what a replaced key signed). A row written into the log by hand without the
  officer's token does not count.

The key versions it names are not compared with today's inventory: a rotation makes new
versions of the same keys, and requiring a new acknowledgement after each would stop the
next ceremony (the destruction of the old key included) on paperwork. Its date is not
held to today either: an acknowledgement stays in force until one of the above changes.
Cancelling a ceremony needs none: an officer can always stop one.

The gate is asked at each proposal and approval; `refuse_late_custody`, when a ceremony
is about to start, asks it of every action the start counts. A proposal or an approval
recorded before the gate existed (a ceremony pending across the upgrade to session 35)
passed no gate, and would otherwise count (session 35): each counted action must come,
in the audit log, after an acknowledgement by its officer that is in force now.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Final

from sqlalchemy import Connection, Row, Select, select, text

from audit.log import Outcome
from audit.schema import audit_entries
from policies.engine import PolicyEngine
from vault._ceremony_guards import is_officer
from vault.custody import STATEMENT_TEXT, STATEMENT_TYPE, recorded
from vault.errors import (
    CeremonyActionBeforeCustody,
    CeremonyNotFound,
    CustodyNotAcknowledged,
    OfficerMfaInvalid,
)
from vault.httpsig import jwk_thumbprint, verify_ecdsa_p256
from vault.storage.schema import key_approvals, key_ceremonies

HINT = "run `cofre keys acknowledge-custody` (POST /v1/admin/keys/custody) first"
PROPOSE: Final = "key.rotation.propose"
APPROVE: Final = "key.rotation.approve"
# The proposal and approval records' predicates, word for word those of migration 0022's
# partial indexes: both databases use a partial index only for a query that carries its
# predicate, and the approval that completes a quorum reads them under the ceremony lock.
PROPOSE_RECORDS: Final = """payload LIKE '{"action":"key.rotation.propose",%'"""
APPROVE_RECORDS: Final = """payload LIKE '{"action":"key.rotation.approve",%'"""


def _in_force(record: dict[str, Any], identity: str, role: str, public: bytes) -> bool:
    try:
        statement = json.loads(record["statement"])
        signature = base64.b64decode(record["signature"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error):
        return False
    if not isinstance(statement, dict) or statement.get("keys") in (None, []):
        return False
    wanted = {"type": STATEMENT_TYPE, "text": STATEMENT_TEXT, "identity": identity, "role": role}
    if any(statement.get(field) != value for field, value in wanted.items()):
        return False
    try:
        verify_ecdsa_p256(public, record["statement"].encode(), signature)
    except (ValueError, OfficerMfaInvalid):
        return False
    return True


def custody_refusal(
    connection: Connection,
    policy: PolicyEngine,
    identity: str,
    unsigned: bool,
    ceremony: str | None = None,
) -> CustodyNotAcknowledged | None:
    """Why officer `identity` may not propose or approve a key ceremony for want of an
    acknowledgement of key custody in force (read on `connection`), or None. With
    `unsigned` (in-process callers in tests only, as for `vault._ceremony_guards.unproven`)
    an officer the policy registers no MFA key for needs none: such an officer can sign
    nothing and cannot act through the API at all.

    Raises `CeremonyNotFound` first when `ceremony` (the one an approval names) is no
    ceremony's id, as the approval itself would: the id is the caller's text (any 64
    characters), and the refusal's audit entry names it as its ``key_id``, which the
    log keeps as written, since its ids are the vault's own (review 35: a card number
    pasted as the id was kept in the append-only log in clear)."""
    if ceremony is not None:
        known = select(key_ceremonies.c.id).where(key_ceremonies.c.id == ceremony)
        if connection.execute(known).first() is None:
            raise CeremonyNotFound("no such key ceremony")  # the caller's text: not echoed
    rules = policy.policy.identities.get(identity)
    key = None if rules is None else rules.mfa_public_key
    if rules is None or key is None:
        if unsigned and rules is not None:
            return None
        reason = "no MFA key in the policy to acknowledge key custody with"
        return CustodyNotAcknowledged(f"{identity} has {reason}", reason=reason)
    public = key.encode()
    keyid = jwk_thumbprint(public)
    others = False
    for record in recorded(connection):
        if record.get("identity") != identity:
            continue
        if record.get("keyid") != keyid:
            others = True
        elif _in_force(record, identity, rules.role.value, public):
            return None
    reason = f"no acknowledgement of key custody in force ({STATEMENT_TYPE}, PCI DSS 3.7.8)"
    if others:  # a token replaced since: what its old key signed no longer speaks for them
        reason += "; those recorded were signed by an MFA key the policy no longer registers"
    return CustodyNotAcknowledged(f"{identity} has {reason}: {HINT}", reason=reason)


def actions_of(predicate: str, ceremony_id: str) -> Select[Any]:
    """The read of the records (`PROPOSE_RECORDS` or `APPROVE_RECORDS`) naming
    `ceremony_id`, oldest first, through their partial index."""
    payload = audit_entries.c.payload
    return (
        select(audit_entries.c.id, payload)
        .where(
            text(predicate),
            payload.contains(f'"key_id":{json.dumps(ceremony_id)}', autoescape=True),
        )
        .order_by(audit_entries.c.id)
    )


def _first_actions(connection: Connection, ceremony_id: str) -> dict[tuple[str, str], int]:
    """(action, officer): the id of the first successful record of that officer's
    proposal or approval of ceremony `ceremony_id`."""
    found: dict[tuple[str, str], int] = {}
    for action, predicate in ((PROPOSE, PROPOSE_RECORDS), (APPROVE, APPROVE_RECORDS)):
        for entry_id, payload in connection.execute(actions_of(predicate, ceremony_id)).all():
            entry = json.loads(payload)
            if (entry.get("action"), entry.get("key_id"), entry.get("outcome")) == (
                action,
                ceremony_id,
                Outcome.SUCCESS.value,
            ):
                found.setdefault((action, str(entry.get("actor"))), int(entry_id))
    return found


def _acknowledged_at(
    records: list[dict[str, Any]], policy: PolicyEngine, identity: str, *, unsigned: bool
) -> int | None:
    """The entry id of `identity`'s first acknowledgement of `records` in force now (0
    when they need none: `custody_refusal`'s `unsigned`), or None."""
    rules = policy.policy.identities.get(identity)
    key = None if rules is None else rules.mfa_public_key
    if rules is None or key is None:
        return 0 if unsigned and rules is not None else None
    public = key.encode()
    keyid = jwk_thumbprint(public)
    for record in records:  # oldest first
        if (record.get("identity"), record.get("keyid")) == (identity, keyid) and _in_force(
            record, identity, rules.role.value, public
        ):
            return int(record["entry_id"])
    return None


def refuse_late_custody(
    connection: Connection, policy: PolicyEngine, row: Row[Any], *, unsigned: bool
) -> None:
    """Raise `CeremonyActionBeforeCustody` when ceremony `row`, about to start, counts a
    proposal or an approval that the audit log on `connection` does not record after an
    acknowledgement of custody in force by its officer (or does not record at all). The
    counted approvals are those `vault._ceremony_guards` counts: its officers still
    granted key administration with the MFA key that signed them, the proposer aside.
    Call it in the start's transaction, before any key is made: the refusal rolls it
    back, the approval that completed the quorum with it."""
    approvals = connection.execute(
        select(key_approvals.c.officer, key_approvals.c.keyid).where(
            key_approvals.c.ceremony_id == row.id
        )
    ).all()
    counted: list[tuple[str, str]] = [(PROPOSE, str(row.proposer))] + [
        (APPROVE, str(officer))
        for officer, keyid in approvals
        if officer != row.proposer and is_officer(policy, officer, keyid)
    ]
    actions = _first_actions(connection, row.id)
    records = recorded(connection)
    late = []
    for action, officer in counted:
        what = "proposal" if action == PROPOSE else "approval"
        since = _acknowledged_at(records, policy, officer, unsigned=unsigned)
        at = actions.get((action, officer))
        if since == 0:  # needs none (in-process callers in tests only)
            continue
        if at is None:
            late.append(f"the {what} by {officer} (no {action} record in the audit log)")
        elif since is None or since > at:
            late.append(f"the {what} by {officer} (entry {at})")
    if not late:
        return
    named = "; ".join(late)
    raise CeremonyActionBeforeCustody(
        f"ceremony {row.id} cannot start: it counts actions recorded before their officers "
        f"acknowledged key custody (PCI DSS 3.7.8): {named}. Each officer named runs "
        "`cofre keys acknowledge-custody`; then cancel this ceremony and propose it again "
        "(an approval, counted once, cannot be made again on it)",
        reason=f"counted actions before their officers' custody acknowledgement: {named}",
    )
