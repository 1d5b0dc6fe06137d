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
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from sqlalchemy import Connection, select

from policies.engine import PolicyEngine
from vault.custody import STATEMENT_TEXT, STATEMENT_TYPE, recorded
from vault.errors import CeremonyNotFound, CustodyNotAcknowledged, OfficerMfaInvalid
from vault.httpsig import jwk_thumbprint, verify_ecdsa_p256
from vault.storage.schema import key_ceremonies

HINT = "run `cofre keys acknowledge-custody` (POST /v1/admin/keys/custody) first"


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
            raise CeremonyNotFound(f"no key ceremony {ceremony}")
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
