"""Check 6c: every key rotation started in the period ran under dual control, proven by
the officers' own signatures (PCI DSS 3.6.1.2, 3.7.6), not by what the database says.

The vault counts a ceremony's proposal and approvals only while each is a request its
officer's token signed for that ceremony (``vault/approval_proof.py``), and it logs
each counted request whole: the ``document`` of the ``key.rotation.propose`` and
``key.rotation.approve`` entries. An operator who holds the database and the HSM PIN
can write any entry into the log (the vault's key signs it), but cannot sign for an
officer. So for each ceremony a ``key.rotation.start`` entry of the period names (and
the ceremony each ``audit.key.handover`` entry of the period belongs to), this check
re-does the vault's count offline:

- the proposal and approval entries are log entries: the period's own, or records of
  ``keys/dual_control.json`` (index, canonical payload, inclusion proof in the
  covering head), since a ceremony may have been proposed before the period began;
- each signature is checked over the method, path and query its action signs, not the
  stored ones: the log's PAN mask hides a ceremony id's last group when it is twelve
  decimal digits, and a stored request naming another action is named as such;
- the proposal's signed request verifies (`request_signature`) under the
  ``mfa_public_key`` of its officer in the policy in force at the start (taken from
  ``policy/versions.jsonl``, which the policy check proves are log entries), is
  ``POST /v1/admin/keys/rotations`` proposing the started kind, derives this
  ceremony's id, and was signed within a proposal's life before the start (the
  vault's ``proposal_ttl_hours`` from ``config/settings.json``, 24 hours without it,
  never more than the vault's bound of 168 hours whatever the file says, plus the
  300-second MFA window; the life used is in the report's summary);
- each approval's verifies under its officer's registered key, is ``POST
  /v1/admin/keys/rotations/<ceremony>/approve``, and was signed after the proposal
  (give or take the window) and before the start;
- the start is the one rotation the approvals began: no other start of the ceremony is
  in the bundle (the period's entries or the records), and the approval completing the
  quorum (the last counted: the quorum is at least 2, so an approval always completes
  it, never the proposal) was signed within the MFA window before the start, since the
  vault starts a rotation in that approval's own transaction (review 27 A1);
- the policy in force at the start says the same, of each counted officer's MFA key,
  role and ``key_admin`` and of ``key_approvals_required``, as the one in force at the
  earlier of the period's start and the proposal: a policy version is a log entry the
  operator can write, so a key registered in between is not proven to be the
  officer's (review 27 A4; the lasting fix, registrations the officers sign, is left);
- every officer counted holds ``key_admin`` in that policy; the proposer never
  approves; an officer who approved twice counts once; and the proposer plus the
  distinct proven approvers reach the policy's ``key_approvals_required``.

A rotation whose entries carry no signed request (logged before the vault kept them, or
by an in-process caller that counted unsigned officers) is **not proven**, and fails
the bundle like any other claim the log makes and cannot show. The report's summary
lists each ceremony (``dual_control``): its officers, the quorum and the vaults
(``@authority``) the requests were signed for. Each counted request must have been
signed for one of the vault's own names (`vault_names`): the names the auditor pins, or
else those the bundle records (``dual_control_vault_names`` in the summary says which),
so a ceremony run on a staging vault with the same officers' keys does not count.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

from cofre_evidence_verifier.bundle import Files, Heads, load_json
from cofre_evidence_verifier.dual_control_log import (
    APPROVE,
    PROPOSE,
    START,
    Index,
    Runs,
    cancel_problem,
    cancels,
    ceremonies_to_check,
    entry_details,
    entry_time,
    index_pool,
    proposal_runs,
    proven_entries,
    run_problem,
)
from cofre_evidence_verifier.errors import SignedRequestError
from cofre_evidence_verifier.policy import (
    certificate_identity_problem,
    in_force,
    policy_documents,
)
from cofre_evidence_verifier.report import Report
from cofre_evidence_verifier.request_signature import (
    PROPOSALS,
    Signed,
    SignedRequest,
    approval_path,
    verify_signed_request,
)
from cofre_evidence_verifier.vault_names import VaultNames, vault_names

KEY_ADMIN: Final = "key_admin"
# The vault's MFA window (`vault.officer_mfa.WINDOW_SECONDS`): how far a signature's
# `created` may be from the vault's clock when it is accepted.
WINDOW_SECONDS: Final = 300
DEFAULT_PROPOSAL_TTL_HOURS: Final = 24.0
# The vault's bound on `keys.proposal_ttl_hours` (`cofre.settings.MAX_PROPOSAL_TTL_HOURS`,
# 7 days): the bundle's config/settings.json is the exporter's to write, so a longer
# life it states is never used (review 27 A3).
MAX_PROPOSAL_TTL_HOURS: Final = 168
DEFAULT_APPROVALS_REQUIRED: Final = 2
_NOT_SIGNED: Final = (
    "its entry carries no request signed by the officer's token (logged before the vault "
    "kept them, or by an unsigned in-process caller): dual control is not proven"
)


@dataclass
class _Ceremony:
    """What the check found of one ceremony."""

    id: str
    kind: str
    start: int
    problems: list[str] = field(default_factory=list)
    proposer: str | None = None
    approvers: list[str] = field(default_factory=list)
    authorities: set[str] = field(default_factory=set)
    required: int = DEFAULT_APPROVALS_REQUIRED
    proposal: str | None = None  # the digest of its verified signed proposal
    signed_at: int | None = None  # its verified proposal's ``created`` (Unix seconds)

    def fail(self, problem: str) -> None:
        self.problems.append(
            f"dual control: ceremony {self.id} ({self.kind} rotation started at entry "
            f"{self.start}): {problem}"
        )

    def summary(self) -> dict[str, Any]:
        officers = len(self.approvers) + (self.proposer is not None)
        return {
            "ceremony": self.id,
            "kind": self.kind,
            "start_entry": self.start,
            "proposer": self.proposer,
            "approvers": self.approvers,
            "officers": officers,
            "required": self.required,
            "signed_for": sorted(self.authorities),
            # When the proposer signed it: across a chain, how far back the bundles at
            # hand must reach (`earlier.lookback_problems`).
            "proposal_signed_at": None if self.signed_at is None else _at(self.signed_at),
            "proven": not self.problems,
        }


@dataclass(frozen=True)
class _Context:
    """What every ceremony's check reads: the log's proven entries, the policy versions
    and the proposal life."""

    pool: dict[int, dict[str, Any]]
    by: Index  # the pool's ceremony entries by action and ceremony (`index_pool`)
    policies: list[tuple[int, dict[str, Any]]]
    ttl_seconds: int
    period_first: int
    names: VaultNames  # what each signed @authority must name
    runs: Runs  # the pool's starts by the signed proposal they ran
    cancelled: dict[str, int]  # the pool's first cancel of each ceremony and proposal


def _verified(  # noqa: PLR0911, PLR0917 - one return per reason a signature does not count
    ceremony: _Ceremony,
    what: str,
    entry: dict[str, Any],
    identities: dict[str, Any],
    policy_index: int,
    names: VaultNames,
) -> tuple[SignedRequest, Signed] | None:
    """The signed request `entry` (`what`: "proposal" or "approval") carries, once it
    verifies under its officer's registered MFA key in the policy in force, over the
    method, path and query that action signs (`_target`), signed for one of the vault's
    `names`; else None, with the problem reported on `ceremony`."""
    officer = str(entry.get("actor"))
    rules = identities.get(officer)
    rules = rules if isinstance(rules, dict) else {}
    operations = rules.get("operations")
    key = rules.get("mfa_public_key")
    where = f"the {what} by {officer}"
    if (lookalike := certificate_identity_problem(officer)) is not None:
        ceremony.fail(f"{where} does not count: {lookalike}")
        return None
    if not isinstance(operations, list) or KEY_ADMIN not in operations:
        ceremony.fail(
            f"{where} does not count: {officer} is not a security officer with "
            f"{KEY_ADMIN} in the policy in force (policy entry {policy_index})"
        )
        return None
    document = entry.get("document")
    if not isinstance(document, str):
        ceremony.fail(f"{where} does not count: {_NOT_SIGNED}")
        return None
    if not isinstance(key, str):
        ceremony.fail(
            f"{where} does not count: the policy in force (policy entry {policy_index}) "
            f"registers no MFA key for {officer}"
        )
        return None
    target = _target(what, ceremony.id)
    try:
        request = SignedRequest.from_json(document)
    except SignedRequestError as exc:
        ceremony.fail(f"{where} does not count: {exc}")
        return None
    try:
        signed = verify_signed_request(request, key, target)
    except SignedRequestError as exc:
        stored = (request.method, request.path, request.query)
        if stored != target and not _masked_form(stored, target):
            wanted = "a proposal" if what == "proposal" else "this ceremony's approval"
            query = f"?{stored[2]}" if stored[2] else ""
            ceremony.fail(
                f"{where} does not count: its request is {stored[0]} {stored[1]}{query}, "
                f"not {wanted}"
            )
        else:
            ceremony.fail(
                f"{where} does not count: its signed request does not verify under "
                f"{officer}'s registered MFA key (policy entry {policy_index}): {exc}"
            )
        return None
    ceremony.authorities.add(signed.authority)
    problem = names.problem(signed.authority)
    if problem is not None:
        ceremony.fail(f"{where} does not count: {problem}")
        return None
    return request, signed


def _target(what: str, ceremony_id: str) -> tuple[str, str, str]:
    """The method, path and query a proposal or an approval of `ceremony_id` signs."""
    return ("POST", PROPOSALS if what == "proposal" else approval_path(ceremony_id), "")


def _masked_form(stored: tuple[str, str, str], target: tuple[str, str, str]) -> bool:
    """Whether `stored` is `target` as the audit log's PAN mask wrote it: same length,
    differing only where `stored` shows an asterisk or a masked digit (a ceremony id
    whose last group is twelve decimal digits is shown ``123456******7890``)."""
    if stored[0] != target[0] or stored[2] != target[2] or len(stored[1]) != len(target[1]):
        return False
    return all(a in {b, "*"} for a, b in zip(stored[1], target[1], strict=True))


def _at(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds")


def _check_proposal(
    ceremony: _Ceremony,
    context: _Context,
    identities: dict[str, Any],
    policy_index: int,
    started: int,
) -> tuple[str | None, int | None, int | None]:
    """The proposer, their signature's ``created`` and the proposal's index, when the
    ceremony's one proposal is proven (the proposer and index are returned in any case
    when there is one)."""
    found = [
        (index, context.pool[index])
        for index in context.by.get((PROPOSE, ceremony.id), [])
        if index < ceremony.start
    ]
    if not found:
        ceremony.fail("no proposal of it is in the bundle (a start nobody proposed)")
        return None, None, None
    if len(found) > 1:
        ceremony.fail(f"it was proposed {len(found)} times (entries {[i for i, _ in found]})")
    index, entry = found[0]
    proposer = str(entry.get("actor"))
    verified = _verified(ceremony, "proposal", entry, identities, policy_index, context.names)
    if verified is None:
        return proposer, None, index
    request, signed = verified
    where = f"the proposal by {proposer} does not count"
    if request.ceremony_id() != ceremony.id:
        ceremony.fail(f"{where}: it signed the proposal of another ceremony")
    elif (kind := request.proposed_kind()) != ceremony.kind:
        ceremony.fail(f"{where}: it proposed a {kind} rotation, not a {ceremony.kind} one")
    elif signed.created < started - context.ttl_seconds - WINDOW_SECONDS:
        ceremony.fail(
            f"{where}: it was signed at {_at(signed.created)}, longer ago than a proposal "
            f"lives ({context.ttl_seconds / 3600:g} h, at most {MAX_PROPOSAL_TTL_HOURS} h "
            f"whatever the bundle's settings say) before the start at {_at(started)}"
        )
    elif signed.created > started + WINDOW_SECONDS:
        ceremony.fail(f"{where}: it was signed at {_at(signed.created)}, after the start")
    else:
        ceremony.proposal = request.proposal_digest()
        return proposer, signed.created, index
    return proposer, None, index


def _approval_problem(
    ceremony: _Ceremony,
    request: SignedRequest,
    signed: Signed,
    proposed_at: int | None,
    started: int,
) -> str | None:
    """Why a verified approval does not count for `ceremony` (proposed at `proposed_at`,
    started at `started`, Unix seconds), or None: it must be this ceremony's approval,
    signed after the proposal and before the start (give or take the MFA window)."""
    if proposed_at is not None and signed.created < proposed_at - WINDOW_SECONDS:
        return f"it was signed at {_at(signed.created)}, before the proposal"
    if signed.created > started + WINDOW_SECONDS:
        return f"it was signed at {_at(signed.created)}, after the start"
    return None


def _token(identities: dict[str, Any], officer: str) -> bytes | None:
    """The public key (SPKI DER, however its PEM is written) `officer` registers in
    `identities`, or None. Review 35: dual control counted identities, and a policy
    logged by the operator (one the vault never loaded) registered one key for two."""
    rules = identities.get(officer)
    pem = rules.get("mfa_public_key") if isinstance(rules, dict) else None
    try:
        key = load_pem_public_key(str(pem).encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _count_approvals(  # noqa: PLR0917 - what the proposal check found, in order
    ceremony: _Ceremony,
    context: _Context,
    identities: dict[str, Any],
    policy_index: int,
    proposal: tuple[str | None, int | None, int | None],
    started: int,
) -> list[tuple[int, int]]:
    """Count `ceremony`'s approvals logged after its `proposal` (proposer, signed at,
    index) and before its start (`started`, Unix seconds): each counted officer is
    added to ``ceremony.approvers``, each that does not count is reported. Returns the
    counted approvals' leaf indexes and signing times, oldest entry first."""
    proposer, proposed_at, first = proposal
    counted: list[tuple[int, int]] = []
    seen: dict[str, int] = {}
    # Each counted officer's registered token, by its key: one token is one person.
    holders: dict[bytes, str] = {}
    if proposer is not None and (proposer_token := _token(identities, proposer)) is not None:
        holders[proposer_token] = proposer
    for index in context.by.get((APPROVE, ceremony.id), []):
        if not (first is not None and first < index < ceremony.start):
            continue
        entry = context.pool[index]
        officer = str(entry.get("actor"))
        if officer == proposer:
            ceremony.fail(f"the proposer approved their own ceremony (entry {index}): not counted")
            continue
        if officer in seen:
            ceremony.fail(
                f"{officer} approved twice (entries {seen[officer]} and {index}): counts once"
            )
            continue
        seen[officer] = index
        verified = _verified(ceremony, "approval", entry, identities, policy_index, context.names)
        if verified is None:
            continue
        problem = _approval_problem(ceremony, *verified, proposed_at, started)
        token = _token(identities, officer)
        if problem is None and token is not None and token in holders:
            problem = (
                f"{officer} and {holders[token]} have the same registered MFA key: one "
                "token signed both (the vault refuses a policy that registers one key for "
                "two identities, review 38)"
            )
        if problem is None:
            if token is not None:
                holders[token] = officer
            ceremony.approvers.append(officer)
            counted.append((index, verified[1].created))
        else:
            ceremony.fail(f"the approval by {officer} (entry {index}) does not count: {problem}")
    return counted


def _check_start(
    ceremony: _Ceremony, context: _Context, counted: list[tuple[int, int]], started: int
) -> None:
    """Fail `ceremony` unless its start is the one rotation its approvals began (review
    27 A1): no other start of it is in the bundle (the period's entries or the
    exporter's records), and the approval completing its quorum (the last counted one:
    the policy's quorum is at least 2, so an approval always completes it) was signed
    within the MFA window before the start. The vault starts a rotation in the
    transaction of the approval that completes its quorum, so a genuine start is that
    close to it; a start written later reuses approvals that were spent, even when the
    exporter leaves the first start out."""
    starts = context.by.get((START, ceremony.id), [])
    others = [index for index in starts if index != ceremony.start]
    if others:
        ceremony.fail(
            f"the bundle holds another start of it (entries {others}): its approvals "
            "started one rotation, not two"
        )
    if counted:
        index, created = counted[-1]
        if created < started - WINDOW_SECONDS:
            ceremony.fail(
                f"the approval completing its quorum (entry {index}) was signed at "
                f"{_at(created)}, more than {WINDOW_SECONDS} s before the start at "
                f"{_at(started)}: the vault starts a rotation with the approval that "
                "completes its quorum, so this start is not that approval's"
            )


def _officer_terms(identities: dict[str, Any], officer: str) -> dict[str, object]:
    """What a policy says of `officer` that decides whether their signature counts: their
    registered MFA key, their role and whether they hold ``key_admin``."""
    rules = identities.get(officer)
    rules = rules if isinstance(rules, dict) else {}
    operations = rules.get("operations")
    return {
        "mfa_public_key": rules.get("mfa_public_key"),
        "role": rules.get("role"),
        KEY_ADMIN: isinstance(operations, list) and KEY_ADMIN in operations,
    }


def _check_policy_unchanged(
    ceremony: _Ceremony,
    context: _Context,
    proposal_index: int | None,
    in_force_at_start: tuple[int, dict[str, Any]],
) -> None:
    """Fail `ceremony` when the policy in force at its start differs, for a counted
    officer's MFA key, role or ``key_admin``, or for ``key_approvals_required``, from the
    one in force at the earlier of the period's start and its proposal (review 27 A4).

    Policy versions are log entries the operator can write (a ``policy.reload`` the
    vault never loaded), so a key registered between those points may be the
    operator's, and is not proven to be the officer's. The earlier point is taken so a
    change made after the proposal was logged (the proposal was signed within the MFA
    window before it) is seen even when the proposal predates the period, and a change
    made in the period before the proposal is seen too; a change made before both is
    not seen here (the bundle of the period that holds it lists it)."""
    policy_index, document = in_force_at_start
    since = context.period_first
    if proposal_index is not None:
        since = min(since, proposal_index)
    # The version in force before the earlier entry (a version logged as the period's
    # first entry is a change in the period).
    base_index, base = in_force(context.policies, since - 1)
    if base_index == policy_index:
        return
    changes = []
    before = base.get("key_approvals_required", DEFAULT_APPROVALS_REQUIRED)
    after = document.get("key_approvals_required", DEFAULT_APPROVALS_REQUIRED)
    if before != after:
        changes.append(f"key_approvals_required {before!r} -> {after!r}")
    old, new = base.get("identities"), document.get("identities")
    old, new = (old if isinstance(old, dict) else {}), (new if isinstance(new, dict) else {})
    officers = [o for o in [ceremony.proposer, *ceremony.approvers] if o is not None]
    for officer in officers:
        was, now = _officer_terms(old, officer), _officer_terms(new, officer)
        changes += [f"{officer}'s {name}" for name in was if was[name] != now[name]]
    if changes:
        ceremony.fail(
            f"the policy in force at its start (policy entry {policy_index}) changed "
            f"{'; '.join(changes)} from the one in force at the period's start or its "
            f"proposal, whichever is earlier (policy entry {base_index}): a policy version "
            "is a log entry the operator can write, so the officers' own confirmation of "
            "the change is needed (docs/auditor-guide.md, check 6c)"
        )


def _check_ceremony(ceremony: _Ceremony, context: _Context, started: int) -> None:
    """Re-do the vault's count of `ceremony`'s officers; see the module docstring."""
    if not context.policies:
        ceremony.fail("no policy version in the bundle registers its officers")
        return
    policy_index, document = in_force(context.policies, ceremony.start)
    required = document.get("key_approvals_required", DEFAULT_APPROVALS_REQUIRED)
    ceremony.required = required if isinstance(required, int) and required >= 2 else 2
    identities = document.get("identities")
    identities = identities if isinstance(identities, dict) else {}
    proposal = _check_proposal(ceremony, context, identities, policy_index, started)
    if proposal[1] is not None:
        ceremony.proposer, ceremony.signed_at = proposal[0], proposal[1]
    if ceremony.proposal is not None:
        pool, runs, digest = context.pool, context.runs, ceremony.proposal
        for problem in (
            run_problem(pool, runs, ceremony.id, ceremony.start, digest),
            cancel_problem(context.cancelled, ceremony.id, ceremony.start, digest),
        ):
            if problem is not None:
                ceremony.fail(problem)
    counted = _count_approvals(ceremony, context, identities, policy_index, proposal, started)
    _check_start(ceremony, context, counted, started)
    _check_policy_unchanged(ceremony, context, proposal[2], (policy_index, document))
    officers = len(ceremony.approvers) + (ceremony.proposer is not None)
    if officers < ceremony.required:
        ceremony.fail(
            f"{officers} of the {ceremony.required} officers the policy in force (policy "
            f"entry {policy_index}) requires are proven (the proposer and distinct "
            "approvers, each by a request their token signed)"
        )


def _proposal_ttl_hours(files: Files) -> float:
    """The proposal life to check against, in hours: the vault's ``keys.proposal_ttl_hours``
    as the bundle's ``config/settings.json`` states it (24 hours when it does not), never
    more than `MAX_PROPOSAL_TTL_HOURS` whatever it says."""
    try:
        settings = load_json(files.get("config/settings.json", b"{}"))
        hours = settings["keys"]["proposal_ttl_hours"]
    except (ValueError, KeyError, TypeError):
        hours = DEFAULT_PROPOSAL_TTL_HOURS
    if isinstance(hours, bool) or not isinstance(hours, int | float) or not hours > 0:
        hours = DEFAULT_PROPOSAL_TTL_HOURS
    return float(min(hours, MAX_PROPOSAL_TTL_HOURS))


def check_dual_control(
    files: Files,
    manifest: dict[str, Any],
    heads: Heads,
    report: Report,
    *,
    authorities: Sequence[str] | None = None,
) -> None:
    """Check that every rotation started in the period was proposed and approved by the
    policy's quorum of distinct officers, each by a request their registered MFA key
    signed for that ceremony and for this vault (one of `authorities`, the names the
    auditor pinned, else of the names the bundle records: `vault_names`); see the module
    docstring. Report each problem, and each ceremony in the report's summary
    (``dual_control``)."""
    size = manifest["covering_head"]["tree_size"]
    head = heads.get(size)
    if head is None:
        return  # already reported by the entries check
    root = base64.b64decode(head["root_hash"])
    problems: list[str] = []
    pool = proven_entries(files, size, root, problems)
    first, end = manifest["entries"]["first_index"], manifest["entries"]["end_index"]
    period = {index for index in pool if first <= index < end}
    hours = _proposal_ttl_hours(files)
    report.summary["dual_control_proposal_ttl_hours"] = hours
    names = vault_names(files, authorities, problems)
    report.summary["dual_control_vault_names"] = names.summary()
    by = index_pool(pool)
    policies, runs, cancelled = policy_documents(files), proposal_runs(pool, by), cancels(pool, by)
    context = _Context(pool, by, policies, int(hours * 3600), first, names, runs, cancelled)
    checked = []
    for ceremony_id, start in ceremonies_to_check(pool, by, period, problems).items():
        entry = pool[start]
        ceremony = _Ceremony(ceremony_id, str(entry_details(entry).get("kind")), start)
        started = entry_time(entry)
        if started is None:
            ceremony.fail("its start entry's time does not parse")
        else:
            _check_ceremony(ceremony, context, started)
        problems += ceremony.problems
        checked.append(ceremony)
    report.summary["dual_control"] = [c.summary() for c in checked]
    for problem in problems:
        report.fail(problem)
    if not problems:
        named = "; ".join(
            f"{c.id} ({c.kind}): {c.proposer} proposed, {', '.join(c.approvers)} approved "
            f"({len(c.approvers) + 1} of {c.required} officers), signed for "
            f"{', '.join(sorted(c.authorities))}"
            for c in checked
        )
        vault = f", for the vault's names {names.source}" if checked else ""
        report.passed(
            "dual_control",
            f"dual control: {len(checked)} key rotation{'' if len(checked) == 1 else 's'} "
            "started in the period, each "
            "proposed and approved by the policy's quorum of distinct officers with "
            f"requests their registered MFA keys signed for it, the proposal within "
            f"{hours:g} h of the start{vault}{': ' + named if named else ''}",
        )
