"""Key registrations the security officers signed under dual control (session 39).

IN PCI SCOPE (key management, PCI DSS 3.7.7). The key registry (`vault.key_registry`)
is the log's `key.register` entries, and whoever writes the database can append one: a
record naming another key under a label in use makes the label unusable for good (a
label registered as two keys is never used, session 37). The repair is a ``register``
key ceremony: an officer proposes "label L is the key with CKA_ID X and check value C"
(the proposal's signed body), other officers approve it, and its start, once the
registry records L (a repair: a new version comes from a rotation) and the token shows
exactly that key under L, sensitive and never extractable, writes a `key.register`
entry carrying the ceremony's id (``details.ceremony``) and the officers' signed
requests whole (the entry's document, `signed_document`).

The registry takes such a record for its label over every record no officer signed,
before or after it, only when it verifies now, offline, from the entry alone
(`signed_registration_time`):

- the proposal verifies under its officer's MFA key registered in the policy in force,
  was signed for this vault (``@authority``), is a ``POST`` of a ``register`` proposal
  whose body names exactly the record's label, CKA_ID and check value, and derives the
  record's ceremony id;
- approvals of that ceremony id, each by another officer the policy grants
  ``key_admin`` with the MFA key that signed it, reach the policy's quorum
  (``key_approvals_required`` officers in all, the proposer never approving).

What a database writer can do with such records, and why it is harmless: a copy of one
(replayed after later records, carried by retention, or copied from another vault's
log) names the label and key its officers signed and nothing else; another vault's is
refused by its ``@authority``. Of several signed records of one label, the one whose
proposal was signed last (its ``created``, which no writer can move) is taken, wherever
it lies in the log, so a replayed older one never wins back. Two signed in the same
second for different keys make the label unusable. A record whose officers the policy no
longer grants (a removed officer, a replaced MFA key) counts as an unsigned one again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection, Row, select, update

from audit.log import AuditEvent, AuditLog, DetailValue, Outcome
from cofre.redaction import mask_pan_like
from hsm.keys import KeyKind, parse_key_label
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.errors import PolicyDenied
from policies.models import Action
from vault.approval_proof import SignedAction, approval_path, approval_problem, proposal_problem
from vault.ceremony import CeremonyState, RotationKind
from vault.errors import CeremonyError
from vault.httpsig import parse_signature
from vault.key_registry import REGISTER, KeyIdentity, KeyRegistry, token_identities
from vault.storage.schema import key_approvals, key_ceremonies

REGISTER_KIND: Final = "register"  # the ceremony kind (`vault.ceremony.RotationKind`)
DOCUMENT_TYPE: Final = "cofre-signed-registration/v1"
_MADE_BY: Final = "created by key ceremony "  # a rotation's registration (`vault.rotation`)
_ROTATES: Final = {
    KeyKind.KEK: RotationKind.KEK.value,
    KeyKind.FINGERPRINT: RotationKind.FINGERPRINT.value,
    KeyKind.AUDIT: RotationKind.AUDIT.value,
}
_KNOWN: Final = 1 << 15  # answers remembered, by digest (`officers_verifier`)


def proposed_registration(proof: str | None) -> dict[str, str] | None:
    """The label, CKA_ID and check value a stored ``register`` proposal's signed body
    names, or None when it is not readable as one."""
    if proof is None:
        return None
    try:
        body = json.loads(SignedAction.from_json(proof).body)
    except ValueError:
        return None
    if not isinstance(body, dict) or set(body) != {"kind", "label", "cka_id", "check"}:
        return None
    if body["kind"] != REGISTER_KIND or not all(isinstance(v, str) for v in body.values()):
        return None
    return {name: body[name] for name in ("label", "cka_id", "check")}


def signed_document(
    proposer: str, proposal: str | None, approvals: list[tuple[str, str | None]]
) -> str:
    """The document of a signed registration: the proposal's and each counted
    approval's officer and stored signed request (`vault.approval_proof`)."""
    return json.dumps(
        {
            "type": DOCUMENT_TYPE,
            "proposal": {"officer": proposer, "proof": proposal},
            "approvals": [{"officer": o, "proof": p} for o, p in approvals],
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def _officer_key(policy: PolicyEngine, identity: object) -> bytes | None:
    """The MFA key (PEM) of `identity` when `policy` grants it key administration."""
    if not isinstance(identity, str):
        return None
    try:
        rules = policy.authorize(identity, Action.KEY_ADMIN)
    except PolicyDenied:
        return None
    return None if rules.mfa_public_key is None else rules.mfa_public_key.encode()


def _signed_actions(document: object) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    try:
        parsed = json.loads(document) if isinstance(document, str) else None
    except ValueError:
        return None
    if not isinstance(parsed, dict) or parsed.get("type") != DOCUMENT_TYPE:
        return None
    proposal, approvals = parsed.get("proposal"), parsed.get("approvals")
    if not isinstance(proposal, dict) or not isinstance(approvals, list):
        return None
    if not all(isinstance(a, dict) for a in approvals):
        return None
    return proposal, approvals


def _proposed_kind(proof: str) -> object:
    """The kind a stored proposal's body names, read before its signature is checked
    (only to know which kind to check it for)."""
    try:
        body = json.loads(SignedAction.from_json(proof).body)
    except ValueError:
        return None
    return body.get("kind") if isinstance(body, dict) else None


def _signed_for(details: dict[str, Any], proof: str) -> str | None:
    """The ceremony kind the proposal `proof` must prove for the record with `details`:
    ``register`` for a register ceremony's registration (its body names the record),
    the key's rotation kind for a rotation's own registration of the version 2 or later
    it made (session 40), ``data`` for a data rotation's start; None for anything else."""
    label, kind = details.get("label"), _proposed_kind(proof)
    if label is None:
        return RotationKind.DATA.value if details.get("kind") == kind == "data" else None
    parsed = parse_key_label(label) if isinstance(label, str) else None
    if parsed is None:
        return None
    if kind == REGISTER_KIND:
        named = proposed_registration(proof)
        same = named is not None and all(details.get(n) == v for n, v in named.items())
        return REGISTER_KIND if same else None
    made_by = f"{_MADE_BY}{details.get('ceremony')}"
    if parsed[1] < 2 or kind != _ROTATES[parsed[0]] or details.get("how") != made_by:
        return None
    return str(kind)


def _proposal(
    details: dict[str, Any],
    proposal: dict[str, Any],
    policy: PolicyEngine,
    authorities: Collection[str] | None,
) -> SignedAction | None:
    """The verified proposal of the ceremony `details` names, when an officer `policy`
    grants key administration signed it for this record (`_signed_for`), else None."""
    ceremony, proof = details.get("ceremony"), proposal.get("proof")
    key = _officer_key(policy, proposal.get("officer"))
    if key is None or not isinstance(ceremony, str) or not isinstance(proof, str):
        return None
    kind = _signed_for(details, proof)
    if kind is None or proposal_problem(proof, key, ceremony, kind, authorities) is not None:
        return None
    return SignedAction.from_json(proof)


def _unmasked_ceremony(details: dict[str, Any], proposal: dict[str, Any]) -> dict[str, Any]:
    """`details` with the ceremony id the proposal's signature derives, when the log's PAN
    mask wrote that id masked (one id in ~280 ends in twelve decimal digits)."""
    proof, ceremony = proposal.get("proof"), details.get("ceremony")
    if not isinstance(proof, str) or not isinstance(ceremony, str):
        return details
    try:
        derived = SignedAction.from_json(proof).ceremony_id()
    except ValueError:
        return details
    if ceremony == derived or mask_pan_like(derived) != ceremony:
        return details
    how = details.get("how")
    if isinstance(how, str) and how == f"{_MADE_BY}{ceremony}":
        how = f"{_MADE_BY}{derived}"
    return {**details, "ceremony": derived, "how": how}


def _unmasked_path(proof: str, ceremony: str) -> str:
    """Stored approval `proof` with the path an approval of `ceremony` signs, when the
    stored path is that path as the log's PAN mask wrote it (the signature still decides)."""
    try:
        action = SignedAction.from_json(proof)
    except ValueError:
        return proof
    path = approval_path(ceremony)
    if action.path == path or mask_pan_like(path) != action.path:
        return proof
    return dataclasses.replace(action, path=path).to_json()


def signed_registration_time(
    details: dict[str, Any],
    document: object,
    policy: PolicyEngine,
    authorities: Collection[str] | None,
) -> int | None:
    """The Unix second the officers' token signed the proposal of the record whose entry
    has `details` (with its ceremony id, ``details["ceremony"]``) and `document`, when it
    proves that ceremony under dual control as `policy` stands now, for this vault
    (`authorities`: its names, None not checked) and for exactly this record: a
    ``register`` ceremony's registration (see the module docstring), a rotation's own
    registration of the key version it made, or a data rotation's start; None otherwise."""
    actions = _signed_actions(document)
    if actions is None:
        return None
    proposal, approvals = actions
    details = _unmasked_ceremony(details, proposal)
    signed = _proposal(details, proposal, policy, authorities)
    if signed is None:
        return None
    ceremony, proposer = str(details["ceremony"]), proposal.get("officer")
    counted: set[str] = set()
    for approval in approvals:
        officer, proof = approval.get("officer"), approval.get("proof")
        key = _officer_key(policy, officer)
        if (
            key is not None
            and officer != proposer
            and isinstance(proof, str)
            and approval_problem(_unmasked_path(proof, ceremony), key, ceremony, authorities)
            is None
        ):
            counted.add(str(officer))
    if len(counted) + 1 < policy.policy.key_approvals_required:
        return None
    return parse_signature(signed.request().headers).created


def ceremony_document(connection: Connection, row: Row[Any]) -> str:
    """The signed document (`signed_document`) of ceremony `row` as its officers acted:
    its proposal and its approvals' stored signed requests, read in `connection`."""
    approvals = connection.execute(
        select(key_approvals.c.officer, key_approvals.c.proof)
        .where(key_approvals.c.ceremony_id == row.id)
        .order_by(key_approvals.c.approved_at)
    ).all()
    return signed_document(row.proposer, row.proposer_proof, [(o, p) for o, p in approvals])


def officers_verifier(
    policy: Callable[[], PolicyEngine], authorities: Callable[[], Collection[str]] | None
) -> Callable[[dict[str, Any], object], int | None]:
    """`signed_registration_time` under the policy in force and the vault's own names,
    as the key registry asks it (`vault.key_registry.KeyRegistry.trust_signed`)."""

    # Each answer kept for the policy in force (its object: a reload makes a new one,
    # held here so that it is never mistaken for another) and names, by a digest of the
    # record: the registry reads every second, and a database writer's many copies of a
    # signed record would otherwise cost their signatures' verifications at each read.
    # Review rev39c: keyed by the record itself, the answers kept every document read
    # (64 KiB each, 4,096 of them: 256 MiB a worker), and past 4,096 records the memory
    # was cleared whole, so every read verified every record again. Now a digest each,
    # and once full the answers kept stay (a flood past the bound costs its excess at
    # each read, never the whole). The registry's lock serialises the calls.
    known: dict[bytes, int | None] = {}
    held: list[tuple[PolicyEngine, frozenset[str] | None]] = []

    def verify(details: dict[str, Any], document: object) -> int | None:
        engine = policy()
        names = None if authorities is None else frozenset(authorities())
        if not held or held[0][0] is not engine or held[0][1] != names:
            known.clear()
            held[:] = [(engine, names)]
        # JSON escapes NUL, so the separator keeps the two parts apart.
        record = json.dumps(details, sort_keys=True, default=str) + "\x00" + str(document)
        key = hashlib.sha256(record.encode("utf-8", "surrogatepass")).digest()
        if key in known:
            return known[key]
        answer = signed_registration_time(details, document, engine, names)
        if len(known) < _KNOWN:
            known[key] = answer
        return answer

    return verify


def start_registration(  # noqa: PLR0917 - a ceremony start's parts, in order
    connection: Connection,
    row: Row[Any],
    approver: str,
    mark: dict[str, DetailValue],
    registry: KeyRegistry,
    provider: HSMProvider,
    audit: AuditLog,
    now: datetime,
) -> None:
    """Carry out approved ``register`` ceremony `row` in `connection`'s transaction: its
    `key.register` entry (with the officers' signed requests), start and completion.
    Raises `CeremonyError` when its proposal names no registration, a label that is not
    a Cofre token key's, or a key the token does not hold under it as exactly one key,
    sensitive and never extractable; nothing is written then."""
    named = proposed_registration(row.proposer_proof)
    if named is None or parse_key_label(named["label"]) is None:
        raise CeremonyError(
            "a register ceremony's proposal must be signed by the officer's token and name "
            "a Cofre key label (cofre-kek-vN, cofre-fp-vN, cofre-audit-vN), its cka_id and "
            "its check value"
        )
    label = named["label"]
    # Or one only unsigned records name, which a version 2 or later no longer counts on
    # (session 40): the upgrade's re-registration of the versions rotations made before.
    if label not in registry.registered(fresh=True) and label not in registry.refused():
        # A repair only: a new version comes from a rotation, which makes the key in the
        # HSM and moves what the old one protects (a key made with the PIN and
        # registered here would skip both).
        raise CeremonyError(
            f"{label!r} is not in the key registry: a register ceremony registers again a "
            "label the registry records; a new key version comes from a rotation"
        )
    wanted = KeyIdentity(label, named["cka_id"], named["check"])
    if token_identities(provider.list_keys()).get(label) != wanted:
        raise CeremonyError(
            f"the token does not hold {label!r} as the key this ceremony names (CKA_ID "
            f"{wanted.cka_id}, check value {wanted.check}), exactly one key, sensitive and "
            "never extractable: nothing registered"
        )
    document = ceremony_document(connection, row)
    connection.execute(
        update(key_ceremonies)
        .where(key_ceremonies.c.id == row.id)
        .values(state=CeremonyState.COMPLETED.value, completed_at=now)
    )
    details: dict[str, DetailValue] = {
        **wanted.as_details(),
        "how": f"registered by key ceremony {row.id}",
        "ceremony": row.id,
    }
    for action, key_id, entry, held in (
        (REGISTER, label, details, True),
        ("key.rotation.start", row.id, {"kind": REGISTER_KIND, "label": label, **mark}, False),
        ("key.rotation.complete", row.id, {"kind": REGISTER_KIND, "label": label}, False),
    ):
        event = AuditEvent(
            action=action,
            outcome=Outcome.SUCCESS,
            actor=approver,
            key_id=key_id,
            details=entry,
            document=document if action == REGISTER else None,
        )
        audit.append(connection, event, hold=held)
    registry.forget()
