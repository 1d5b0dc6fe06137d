"""What keeps key ceremonies apart and the token clean when one fails (review 38).

IN PCI SCOPE (key management). `vault.rotation` calls these: the ceremony lock that
serialises ceremony writes across nodes, the refusal to start a rotation while another
of its kind runs, and the clean-up of the token keys a failed approval made (never of
one its transaction may have recorded: review 42).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import suppress
from datetime import datetime, timedelta
from typing import Any, Final

import structlog
from sqlalchemy import Connection, Engine, Row, Select, select, text
from sqlalchemy.exc import SQLAlchemyError

from audit.log import AuditEvent, AuditLog, DetailValue, HexDigest, Outcome
from audit.retention import record_details
from audit.schema import audit_entries
from cofre.errors import CofreError
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.errors import PolicyDenied
from policies.models import Action
from vault.approval_proof import SignedAction, approval_problem, proposal_problem
from vault.ceremony import CeremonyState, OfficerCertificate, RotationKind
from vault.errors import CeremonyError, CeremonyRefused, OfficerMfaError
from vault.httpsig import jwk_thumbprint, parse_signature
from vault.key_registry import KeyRegistry
from vault.officer_mfa import WINDOW_SECONDS
from vault.storage.schema import key_approvals, key_ceremonies

# The transaction-scoped advisory lock that serialises ceremony writes (propose, approve,
# cancel) across the nodes of one PostgreSQL: "CofreK". SQLite's BEGIN IMMEDIATE already
# keeps writers apart.
_CEREMONY_LOCK_KEY: Final = 0x436F6672654B
_log = structlog.get_logger("cofre.vault")


def hold_ceremony_lock(connection: Connection) -> None:
    """Hold the ceremony lock for the rest of `connection`'s transaction. Without it two
    nodes proposing at once both read "none open" and both insert (PostgreSQL, READ
    COMMITTED), and two approvals at once each count the approvals without the other's
    (review 38)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CEREMONY_LOCK_KEY})


def is_officer(policy: PolicyEngine, identity: str, keyid: str | None = None) -> bool:
    """Whether `policy` grants `identity` key administration and still registers `keyid`,
    the thumbprint of the MFA key that signed its ceremony action (None: an action that
    did not come through the API's second factor). A key replaced in the policy (a token
    lost or stolen) loses the say of what it signed, as a removed officer does (review
    cer: a proposal signed by a stolen token ran on one other officer's approval)."""
    try:
        rules = policy.authorize(identity, Action.KEY_ADMIN)
    except PolicyDenied:
        return False
    if keyid is None:
        return True
    registered = rules.mfa_public_key
    return registered is not None and jwk_thumbprint(registered.encode()) == keyid


def _problem(
    policy: PolicyEngine,
    row: Row[Any],
    action: str,
    officer: str,
    proof: str | None,
    *,
    unsigned: bool,
    authorities: Collection[str] | None,
    signed_within: tuple[int, int] | None = None,
) -> str | None:
    """Why `officer`'s `action` ("proposal" or "approval") of ceremony `row` lacks a
    proof that their token signed it, or None when it has one (see `unproven`)."""
    rules = policy.policy.identities.get(officer)
    key = None if rules is None else rules.mfa_public_key
    if key is None:
        return None if unsigned else "the policy registers no MFA key for them"
    if action == "proposal":
        return proposal_problem(
            proof, key.encode(), row.id, row.kind, authorities, signed_within=signed_within
        )
    return approval_problem(proof, key.encode(), row.id, authorities)


def unproven(
    policy: PolicyEngine,
    row: Row[Any],
    approvals: dict[str, str | None],
    *,
    unsigned: bool,
    authorities: Collection[str] | None = None,
    signed_within: tuple[int, int] | None = None,
) -> list[str]:
    """Which of ceremony `row`'s proposal and `approvals` (officer: stored proof) lack a
    proof that the officer's token signed them, each with why (`vault.approval_proof`).
    With `unsigned` (in-process callers in tests only), an officer the policy registers
    no MFA key for needs none; the server's own wiring never sets it, and such an officer
    cannot act through the API at all. With `authorities` (the vault's own names), each
    must have been signed for one of them; with `signed_within` (first and last Unix
    second), the proposal must have been signed within it (a past ceremony replayed)."""
    found = []
    actions = [
        ("proposal", row.proposer, row.proposer_proof),
        *(("approval", officer, proof) for officer, proof in approvals.items()),
    ]
    for action, officer, proof in actions:
        problem = _problem(
            policy,
            row,
            action,
            officer,
            proof,
            unsigned=unsigned,
            authorities=authorities,
            signed_within=signed_within,
        )
        if problem is not None:
            found.append(f"the {action} by {officer}: {problem}")
    return found


def _standing(policy: PolicyEngine, row: Row[Any], approvals: dict[str, str | None]) -> list[str]:
    """The approvers in `approvals` (officer: key id that signed) who still count under
    `policy`: granted key administration with that MFA key, and never the proposer (a
    row the vault refuses to write: review appr; one removed keeps no say: review 38)."""
    return [
        a for a, keyid in approvals.items() if a != row.proposer and is_officer(policy, a, keyid)
    ]


def counting_now(
    policy: PolicyEngine,
    row: Row[Any],
    given: Sequence[Sequence[Any]],
    *,
    unsigned: bool,
    authorities: Collection[str] | None = None,
    signed_within: tuple[int, int] | None = None,
) -> list[str]:
    """Which of ceremony `row`'s approvers (`given`: officer, key id, stored proof, in
    order) would count if it were counted now, by `standing_approvals`' own checks: still
    standing, and a proof that their key signed this ceremony's approval; none when the
    proposal itself no longer stands (its officer removed or their key replaced, its
    proof missing, not theirs or signed outside `signed_within`), where approving is
    refused whatever was approved before. The officers' view, so that a ceremony shows
    "2 of 2" only when two approvals count (the ceremony review: the status listed every
    row)."""
    proposal = _problem(
        policy,
        row,
        "proposal",
        row.proposer,
        row.proposer_proof,
        unsigned=unsigned,
        authorities=authorities,
        signed_within=signed_within,
    )
    if proposal is not None or not is_officer(policy, row.proposer, row.proposer_keyid):
        return []
    proofs = {officer: proof for officer, _, proof in given}
    standing = _standing(policy, row, {officer: keyid for officer, keyid, _ in given})
    return [
        officer
        for officer in standing
        if _problem(
            policy,
            row,
            "approval",
            officer,
            proofs[officer],
            unsigned=unsigned,
            authorities=authorities,
        )
        is None
    ]


def standing_approvals(
    connection: Connection,
    policy: PolicyEngine,
    row: Row[Any],
    keys: ApprovalKeys,
    *,
    unsigned: bool = False,
    authorities: Collection[str] | None = None,
    signed_within: tuple[int, int] | None = None,
) -> list[str] | None:
    """The other officers whose approvals of ceremony `row` count under `policy` before
    `keys.officer` approves it, or None when that officer already did (it counts once).
    Only officers the policy still grants key administration, with the MFA key that signed
    their action, count (review 38: one removed keeps no say). Raises `CeremonyError`
    when the proposer no longer counts, or when the officer's approval was signed by a
    key replaced since (the row stays: the vault's role may not delete approvals), and
    `CeremonyRefused` when the proposal or a counted approval (this one included) has no
    stored proof that the officer's token signed it for this ceremony (review appr: rows
    written straight into the database), or its proposal was signed outside
    `signed_within` (a past ceremony written back as pending)."""
    identity = keys.officer
    given = connection.execute(
        select(key_approvals.c.officer, key_approvals.c.keyid, key_approvals.c.proof).where(
            key_approvals.c.ceremony_id == row.id
        )
    ).all()
    approvals: dict[str, str | None] = {officer: keyid for officer, keyid, _ in given}
    proofs: dict[str, str | None] = {officer: proof for officer, _, proof in given}
    if identity in approvals:
        if is_officer(policy, identity, approvals[identity]):
            return None
        raise CeremonyError(
            "your approval was signed by an MFA key the policy no longer registers: "
            "cancel the ceremony and propose again"
        )
    if not is_officer(policy, row.proposer, row.proposer_keyid):
        raise CeremonyError(
            f"ceremony {row.id} was proposed by {row.proposer}, whom the policy no longer "
            "grants key administration, or with an MFA key it no longer registers: cancel it"
        )
    standing = _standing(policy, row, approvals)
    if keys.certificate is not None and (
        revoked := revoked_officers(connection, row, standing, keys.certificate.revoked)
    ):
        reason = "; ".join(revoked)
        raise CeremonyRefused(
            f"ceremony {row.id} takes no approval while the certificate of an officer who "
            f"acted in it is revoked: {reason}. Cancel it and propose again",
            reason=f"an officer's certificate is revoked: {reason}",
        )
    counted = {a: proofs[a] for a in standing} | {identity: keys.proof}
    problems = unproven(
        policy,
        row,
        counted,
        unsigned=unsigned,
        authorities=authorities,
        signed_within=signed_within,
    )
    if problems:
        reason = "; ".join(problems)
        raise CeremonyRefused(
            f"ceremony {row.id} counts only actions its officers' tokens signed for it, "
            f"within its life, and these were not: {reason}. Cancel it, and find out how "
            "they got into the database",
            reason=f"no valid signature by the officer's token: {reason}",
        )
    return standing


def revoked_officers(
    connection: Connection, row: Row[Any], standing: list[str], revoked: Callable[[str], bool]
) -> list[str]:
    """Who, of ceremony `row`'s proposer and its counted approvers (`standing`), acted with
    a client certificate the CRL in force now revokes (or one stored unreadable), each
    with why. An officer who leaves has their certificate revoked: their pending
    proposal or approval must not carry a rotation after it (PCI DSS 8.2.6, 3.6.1.2). A
    NULL certificate (before migration 0020, an in-process caller) is not checked."""
    stored = dict(
        connection.execute(
            select(key_approvals.c.officer, key_approvals.c.certificate).where(
                key_approvals.c.ceremony_id == row.id, key_approvals.c.officer.in_(standing)
            )
        ).all()
    )
    acted = [(f"the proposer {row.proposer}", row.proposer_certificate)]
    acted += [(f"the approver {officer}", stored.get(officer)) for officer in standing]
    found = []
    for who, pem in acted:
        if pem is None:
            continue
        try:
            if revoked(pem):
                found.append(f"{who}'s certificate is revoked")
        except ValueError:
            found.append(f"the certificate stored for {who} is not readable")
    return found


def proposal_life(now: datetime, ttl: timedelta) -> tuple[int, int]:
    """The first and last signed ``created`` a proposal counts with at `now` (Unix
    seconds): it lives `ttl` from its officer's signature, give or take the MFA window."""
    at = int(now.timestamp())
    return at - int(ttl.total_seconds()) - WINDOW_SECONDS, at + WINDOW_SECONDS


# The start records' predicate, word for word that of migration 0021's partial index
# (``ix_audit_entries_rotation_start``): both databases use a partial index only for a
# query that carries its predicate, and without it the read scanned the audit log (on a
# busy vault, months of entries) inside the approval that completes a quorum.
START_RECORDS: Final = """payload LIKE '{"action":"key.rotation.start",%'"""
# The cancel records' predicate, that of migration 0021's other partial index
# (``ix_audit_entries_rotation_cancel``), for the same reason.
CANCEL_RECORDS: Final = """payload LIKE '{"action":"key.rotation.cancel",%'"""


def starts_of(ceremony_id: str) -> Select[Any]:
    """The read of the start records naming `ceremony_id` (a few records a year)."""
    payload = audit_entries.c.payload
    return select(payload).where(
        text(START_RECORDS),
        payload.contains(f'"key_id":{json.dumps(ceremony_id)}', autoescape=True),
    )


def _proposal_starts(proposal: str) -> Select[Any]:
    """The read of the start records of ceremonies proposed by `proposal`
    (`proposal_digest`), through the same partial index."""
    payload = audit_entries.c.payload
    return select(payload).where(
        text(START_RECORDS),
        payload.contains(f'"proposal":{json.dumps(proposal)}', autoescape=True),
    )


def cancels_of(ceremony_id: str, proposal: str | None) -> Select[Any]:
    """The read of the cancel records naming ceremony `ceremony_id` or, when it has one,
    its signed `proposal` (a few a year, through migration 0021's cancel index)."""
    payload = audit_entries.c.payload
    named = payload.contains(f'"key_id":{json.dumps(ceremony_id)}', autoescape=True)
    if proposal is not None:
        named = named | payload.contains(f'"proposal":{json.dumps(proposal)}', autoescape=True)
    return select(payload).where(text(CANCEL_RECORDS), named)


def _cancelled(connection: Connection, ceremony_id: str, proposal: str | None) -> bool:
    """Whether the audit log holds a cancel of `ceremony_id`, or of a ceremony of its
    signed `proposal`, that took effect (a denied cancel changed nothing)."""
    for entry in connection.execute(cancels_of(ceremony_id, proposal)).scalars():
        parsed = record_details(entry)  # None: not the vault's (session 39)
        if parsed is None or parsed[0].get("outcome") != Outcome.SUCCESS.value:
            continue
        record, details = parsed
        if record.get("key_id") == ceremony_id or (
            proposal is not None and details.get("proposal") == proposal
        ):
            return True
    return False


def proposal_digest(row: Row[Any]) -> HexDigest | None:
    """The SHA-256 of what the officer's token signed when proposing ceremony `row`
    (its signature parameters: created, nonce, key id), or None for a ceremony with no
    readable proposal proof (in-process callers in tests; an unreadable proof never
    counts). Not the ceremony id, which derives from the ``Signature`` header as sent:
    its label lies outside the signature base, an ECDSA (r, s) verifies as (r, n - s),
    and base64 leaves spare bits, so a database writer made other ids of one signed
    proposal that all verified (session 31's review). The parameters are covered by the
    signature: no copy of the proof changes them."""
    if row.proposer_proof is None:
        return None
    try:
        action = SignedAction.from_json(row.proposer_proof)
        params = parse_signature(action.request().headers).params
    except (ValueError, OfficerMfaError):
        return None
    return HexDigest(hashlib.sha256(b"cofre proposal\x00" + params.encode()).hexdigest())


def proposal_mark(row: Row[Any]) -> dict[str, DetailValue]:
    """What ceremony `row`'s `key.rotation.start` entry adds to its details: its
    `proposal_digest`, which `refuse_a_second_run` looks for, when it has one."""
    proposal = proposal_digest(row)
    return {} if proposal is None else {"proposal": proposal}


def _started(connection: Connection, ceremony_id: str) -> bool:
    """Whether the audit log holds a start of `ceremony_id`."""
    found = (record_details(e) for e in connection.execute(starts_of(ceremony_id)).scalars())
    return any(parsed and parsed[0].get("key_id") == ceremony_id for parsed in found)


def _proposal_started(connection: Connection, proposal: str) -> bool:
    """Whether the audit log holds a start of a ceremony proposed by `proposal`."""
    found = (record_details(e) for e in connection.execute(_proposal_starts(proposal)).scalars())
    return any(parsed and parsed[1].get("proposal") == proposal for parsed in found)


def replay_refusal(connection: Connection, row: Row[Any]) -> CeremonyRefused | None:
    """The refusal a start of ceremony `row` meets because it already ran, or None: the
    audit log holds its `key.rotation.start`, a cancel of it (or of a ceremony of its
    signed proposal), or a start of another ceremony of its signed proposal. The one
    check `refuse_a_second_run` raises and the officers' view shows
    (`vault._ceremony_view`), so that a ceremony the vault would refuse never shows as
    waiting for an approval (session 32)."""
    ceremony_id = row.id
    if _started(connection, ceremony_id):
        return CeremonyRefused(
            f"ceremony {ceremony_id} already started (the audit log holds its "
            "key.rotation.start): a ceremony runs once. Cancel it, and find out how it "
            "came to be pending again",
            reason="the ceremony already started",
        )
    proposal = proposal_digest(row)
    if _cancelled(connection, ceremony_id, proposal):
        # Set back to pending from cancelled by a database writer: an officer's cancel
        # would otherwise be overridden by the one approval still missing (session 31).
        return CeremonyRefused(
            f"ceremony {ceremony_id} was cancelled (the audit log holds its "
            "key.rotation.cancel, or one of another ceremony of its signed proposal): a "
            "cancelled ceremony never starts. Propose again, and find out how it came to "
            "be pending",
            reason="the ceremony was cancelled",
        )
    if proposal is not None and _proposal_started(connection, proposal):
        return CeremonyRefused(
            f"ceremony {ceremony_id}'s proposal already started a ceremony (the audit "
            "log holds a key.rotation.start of the proposal its officer's token signed): "
            "a proposal runs once. Cancel it, and find out how a copy of a ceremony came "
            "to be pending",
            reason="its proposal already started a ceremony",
        )
    return None


def refuse_a_second_run(
    connection: Connection, kind: RotationKind, row: Row[Any]
) -> dict[str, DetailValue]:
    """Raise `CeremonyError` when a rotation of `kind` other than ceremony `row` runs: two
    at once would each retire the key in use, and the first to finish erases the key the
    other is still moving records off (review 38). Raise `CeremonyRefused` when `row`
    itself already started (the audit log holds its `key.rotation.start`), was
    cancelled, or another ceremony of its signed proposal started (`replay_refusal`):
    a ceremony runs once. Its rows are the database's, and a writer who set one that ran
    back to pending and deleted its last approval had one officer's approval start a
    second rotation on a proposal of the day before (session 31); one who copied it to a
    new row under another id of the same signed proposal did the same
    (`proposal_digest`, session 31's review). The log's entries are what that writer
    cannot take back unseen. Returns the `proposal_mark` the start entry must carry for
    the next such check to find it."""
    refusal = replay_refusal(connection, row)
    if refusal is not None:
        raise refusal
    running = connection.execute(
        select(key_ceremonies.c.id).where(
            key_ceremonies.c.kind == kind.value,
            key_ceremonies.c.state == CeremonyState.RUNNING.value,
            key_ceremonies.c.id != row.id,
        )
    ).first()
    if running is not None:
        raise CeremonyError(
            f"a {kind.value} rotation is already running ({running.id}): approve this "
            "one after it completes"
        )
    return proposal_mark(row)


class ApprovalKeys:
    """The token keys one approval made (`labels`), and whether its COMMIT was sent.

    A failure before the COMMIT rolled the transaction back: its keys were never
    recorded. A failure during the COMMIT (the connection lost once it was sent) leaves
    the outcome open on PostgreSQL: the server may have committed, or be committing
    still, where a fresh read does not see it yet (review 42). `transaction` is then what
    settles it: PostgreSQL's id of the approval's transaction."""

    def __init__(  # noqa: PLR0917 - an approval's parts, in the order they are known
        self,
        officer: str,
        ceremony_id: str,
        request_id: str | None,
        keyid: str | None = None,
        proof: str | None = None,
        certificate: OfficerCertificate | None = None,
    ) -> None:
        self.officer, self.ceremony_id, self.request_id = officer, ceremony_id, request_id
        self.certificate = certificate  # the approval's client certificate, and the CRL
        self.keyid = keyid  # the MFA key that signed the approval (the ceremony review)
        self.proof = proof  # the signed request, stored (`vault.approval_proof`)
        self.labels: list[str] = []
        self.committing = False
        self.transaction: int | None = None

    def before_commit(self, connection: Connection) -> None:
        """Call as the transaction's last step: from here a failure may be its COMMIT's."""
        if self.labels and connection.dialect.name == "postgresql":
            self.transaction = int(connection.execute(text("SELECT txid_current()")).scalar_one())
        self.committing = True


# How long a failed approval waits for a COMMIT whose answer it lost to settle on the
# server before it leaves the keys on the token (an officer's request, so seconds).
SETTLE_SECONDS: float = 3.0


def _commit_outcome(engine: Engine, transaction: int | None) -> str | None:
    """The outcome of `transaction` as PostgreSQL knows it (`txid_status`, on a fresh
    connection): "committed" or "aborted", asked again for up to `SETTLE_SECONDS` while
    it is "in progress"; None when it stays open or cannot be asked."""
    if transaction is None:
        return None
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        status = None
        with suppress(SQLAlchemyError), engine.connect() as connection:
            status = connection.execute(
                text("SELECT txid_status(CAST(:xid AS bigint))"), {"xid": transaction}
            ).scalar_one_or_none()
        if status in {"committed", "aborted"} or time.monotonic() >= deadline:
            return status
        time.sleep(0.1)


def discard_unrecorded(
    registry: KeyRegistry,
    provider: HSMProvider,
    keys: ApprovalKeys,
    engine: Engine,
    audit: AuditLog,
) -> None:
    """Destroy the keys a failed approval made on the token, once it is known they were
    never recorded. Left on the token, each would fail every node's readiness (an
    unregistered key) and refuse every later approval of its kind (review 38).

    Known when the failure came before the COMMIT was sent, or on PostgreSQL when the
    server says the transaction aborted; then only keys a fresh read of the registry does
    not show go. A COMMIT whose outcome is not known (connection lost, the server still
    committing or unreachable) leaves them: a key whose transaction committed is never
    destroyed (review 42). A `key.rotation.keys_left` audit entry and a warning name
    keys left (readiness does too while they are unrecorded, for an operator)."""
    if not keys.labels:
        return
    if keys.committing and engine.dialect.name != "sqlite":
        # SQLite is in process: once its COMMIT has failed and the connection is reset,
        # the file holds the outcome and a fresh read shows it.
        outcome = _commit_outcome(engine, keys.transaction)
        if outcome == "committed":
            _log.warning("key ceremony approval committed though its client saw an error")
            return
        if outcome != "aborted":
            _leave(keys, engine, audit, "the outcome of the approval's commit is unknown")
            return
    try:
        registered = registry.registered(fresh=True)
    except CofreError:
        _leave(keys, engine, audit, "the key registry could not be read")
        return
    for label in keys.labels:
        if label in registered:
            continue
        with suppress(CofreError):
            if provider.has_key(label):
                provider.destroy_key(label)
                _log.info("key ceremony key destroyed: never recorded", label=label)


def _leave(keys: ApprovalKeys, engine: Engine, audit: AuditLog, reason: str) -> None:
    """Record that `keys` stay on the token: a warning, and an audit entry when the
    database takes one (it may be what failed)."""
    # `transaction` is what an operator asks PostgreSQL about (`txid_status`) before
    # destroying one (docs/key-ceremony.md).
    _log.warning(
        "key ceremony keys left on the token",
        labels=keys.labels,
        reason=reason,
        ceremony=keys.ceremony_id,
        transaction=keys.transaction,
    )
    details: dict[str, DetailValue] = {
        "labels": ",".join(keys.labels),
        "reason": reason,
        "transaction": keys.transaction,
    }
    event = AuditEvent(
        action="key.rotation.keys_left",
        outcome=Outcome.FAILED,
        actor=keys.officer,
        request_id=keys.request_id,
        key_id=keys.ceremony_id,
        details=details,
    )
    with suppress(CofreError, SQLAlchemyError), engine.begin() as connection:
        audit.append(connection, event)
