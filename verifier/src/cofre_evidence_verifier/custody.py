"""Check 7: the key custodians' acknowledgements (``keys/custody.json``, PCI DSS 3.6.1.2,
3.7.8) are signed by each officer's registered key and are entries of the log itself.

Each record is checked on its own, so a problem names the officer and the entry:

- it carries its audit entry (leaf ``index``, canonical ``payload``) with an inclusion
  proof in the covering signed head, and that entry is a successful
  ``key.custody.acknowledge`` recorded for the same officer, with the same statement,
  signature and signing key (the file cannot say more than the log);
- its statement is a ``cofre-key-custody/v1`` statement about that officer and their
  role, naming at least one key, dated within a day of its entry (as the vault requires
  at submission: an old signed acknowledgement replayed into the log later is not
  current);
- its signature (ecdsa-p256-sha256, r||s) verifies under the officer's registered MFA key:
  the ``mfa_public_key`` of that identity in the policy in force at the entry, taken
  from ``policy/versions.jsonl`` (which the policy check proves are log entries); an
  acknowledgement older than every version the bundle carries is checked against the
  first one (the policy in force at the period's start), so an officer whose key
  changed since acknowledges again.

And every acknowledgement the period's entries hold is in the file. The report's
summary lists the custodians of each key (``custodians``).
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cofre_evidence_verifier.boundaries import ENTRY_TIME
from cofre_evidence_verifier.bundle import (
    Files,
    Heads,
    hash_list,
    integer,
    json_lines,
    json_object,
    load_json,
    string,
)
from cofre_evidence_verifier.errors import MalformedBundle
from cofre_evidence_verifier.merkle import included, leaf_hash
from cofre_evidence_verifier.policy import (
    certificate_identity_problem,
    in_force,
    policy_documents,
)
from cofre_evidence_verifier.report import Report

NAME: Final = "keys/custody.json"
ACKNOWLEDGE: Final = "key.custody.acknowledge"
STATEMENT_TYPE: Final = "cofre-key-custody/v1"
# How far the statement's date may be from its entry's (UTC) day: the vault's
# `vault.custody.STATEMENT_DATE_SKEW`, which it enforces at submission.
STATEMENT_DATE_SKEW: Final = timedelta(days=1)
# The ceremony actions a custodian takes (`vault.rotation`): counted only after an
# acknowledgement of custody by their officer.
_CEREMONY_ACTIONS: Final = frozenset({"key.rotation.propose", "key.rotation.approve"})
# What the record repeats from its audit entry's details.
_RECORDED: Final = ("statement", "signature", "public_key")
# The period's entries (first index, end index) and times (from, to).
_Span = tuple[int, int, str, str]


def _policies(files: Files) -> list[tuple[int, dict[str, Any]]]:
    """The identities of each policy version the bundle carries, by leaf index (a
    version that does not parse is left out: the policy check reports it)."""
    return [
        (index, identities)
        for index, document in policy_documents(files)
        if isinstance(identities := document.get("identities", {}), dict)
    ]


def _entry(payload: object) -> dict[str, Any]:
    """The audit entry `payload` (a JSON object in a string). Raises `ValueError`."""
    if not isinstance(payload, str):
        raise MalformedBundle("an audit entry's payload is not a string")
    return json_object(payload, "an audit entry")


def _details(entry: dict[str, Any]) -> dict[str, Any]:
    """An acknowledgement entry's details, its statement included: the entry's document
    since session 34 (recorded whole), a detail before (cut at 512 characters)."""
    details = entry.get("details")
    out = dict(details) if isinstance(details, dict) else {}
    if "document" in entry:
        out["statement"] = entry["document"]
    return out


def _signature_verifies(pem: str, message: bytes, signature: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        public = serialization.load_pem_public_key(pem.encode())
    except (binascii.Error, ValueError, TypeError):
        return False
    if len(raw) != 64 or not isinstance(public, ec.EllipticCurvePublicKey):
        return False
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        public.verify(der, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _action(payload: str) -> object:
    try:
        return _entry(payload).get("action")
    except ValueError:
        return None


def _same_key(a: str, b: str) -> bool:
    try:
        return serialization.load_pem_public_key(a.encode()).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) == serialization.load_pem_public_key(b.encode()).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, TypeError):
        return False


def _proven_entry(
    record: dict[str, Any], where: str, *, size: int, root: bytes, period: dict[int, str]
) -> tuple[dict[str, Any] | None, str]:
    """The audit entry `record` carries, once proven to be a custody acknowledgement of
    the log; else None and the problem."""
    index, payload, proof = record.get("index"), record.get("payload"), record.get("proof")
    try:
        index = integer(index, "index")
        proven = hash_list(proof, "proof")
        payload = string(payload, "payload")
    except MalformedBundle:
        return None, f"{where} has no audit entry (index, payload and inclusion proof)"
    where = f"{where} (entry {index})"
    if not included(leaf_hash(payload.encode("utf-8")), index, size, proven, root):
        return None, (
            f"{where}: its audit entry is not in the log (the inclusion proof in signed "
            f"head {size} fails; removed or altered entry)"
        )
    if index in period and period[index] != payload:
        return None, f"{where}: differs from entry {index} of audit/entries.jsonl"
    try:
        entry = _entry(payload)
    except ValueError:
        entry = {}
    if entry.get("action") != ACKNOWLEDGE or entry.get("outcome") != "success":
        return None, f"{where}: audit entry {index} is not a custody acknowledgement"
    return entry, where


def _key_problems(
    entry: dict[str, Any],
    statement: dict[str, Any],
    *,
    text: str,
    where: str,
    index: int,
    policies: list[tuple[int, dict[str, Any]]],
) -> list[str]:
    """Whether the officer's role and registered MFA key, in the policy in force at
    entry `index`, are the statement's and the signature's."""
    actor = entry.get("actor")
    if not policies:
        return [f"{where}: no policy version in the bundle registers {actor}'s key"]
    policy_index, identities = in_force(policies, index)
    rules = identities.get(str(actor), {})
    registered = rules.get("mfa_public_key") if isinstance(rules, dict) else None
    if not isinstance(registered, str):
        return [
            f"{where}: {actor} has no registered MFA key in the policy in force "
            f"(policy entry {policy_index})"
        ]
    if (lookalike := certificate_identity_problem(str(actor))) is not None:
        return [f"{where}: the acknowledgement by {actor} does not count: {lookalike}"]
    problems = []
    if statement.get("role") != rules.get("role", "service"):
        problems.append(
            f"{where}: the statement's role {statement.get('role')!r} is not the "
            f"officer's role in the policy in force (policy entry {policy_index})"
        )
    details = _details(entry)
    if not _same_key(str(details.get("public_key", "")), registered) or not (
        _signature_verifies(registered, text.encode(), str(details.get("signature", "")))
    ):
        problems.append(
            f"{where}: the signature does not verify under {actor}'s registered MFA key "
            f"(policy entry {policy_index}): signed by someone else"
        )
    return problems


def _date_problems(statement: dict[str, Any], entry: dict[str, Any], where: str) -> list[str]:
    """Whether the statement is dated within `STATEMENT_DATE_SKEW` of its entry's day."""
    try:
        day = date.fromisoformat(str(statement.get("date")))
        at = datetime.fromisoformat(str(entry.get("time")).replace("Z", "+00:00"))
    except ValueError:
        return [f"{where}: the statement's or the entry's date does not parse"]
    entry_day = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC).date()
    if abs(day - entry_day) > STATEMENT_DATE_SKEW:
        return [
            f"{where}: the statement is dated {day.isoformat()}, more than "
            f"{STATEMENT_DATE_SKEW.days} day from its entry ({entry_day.isoformat()}): "
            "an old acknowledgement replayed"
        ]
    return []


def _order_problems(entry: dict[str, Any], index: int, span: _Span, where: str) -> list[str]:
    """Whether an entry outside the period is dated on its side of it (review 35).

    Entry times follow leaf order (the entries and boundaries checks rely on it), but
    only the period's own entries are checked against it: an acknowledgement entry
    written after the period and dated a year back, with an officer's genuine statement
    of then, met the statement-date check and passed as current. One after the period
    may not be dated before the period began, one before it not after it ended (a
    margin of the period's length for clocks of several nodes)."""
    start, end, since, until = span
    at = entry.get("time")
    if start <= index < end:
        return []  # the period's own: the entries check holds it to the period
    if not isinstance(at, str) or ENTRY_TIME.fullmatch(at) is None:
        return [f"{where}: its entry's time is not in the vault's spelling"]
    if index >= end and at < since:
        return [
            f"{where}: its entry, logged after the period, is dated {at}, before the period "
            "began: an old acknowledgement replayed into the log"
        ]
    if index < start and at >= until:
        return [f"{where}: its entry, logged before the period, is dated {at}, after it ended"]
    return []


def _check_record(
    record: dict[str, Any],
    *,
    size: int,
    root: bytes,
    period: dict[int, str],
    policies: list[tuple[int, dict[str, Any]]],
    span: _Span,
) -> tuple[list[str], list[str]]:
    """The problems of one acknowledgement, and the keys it makes its officer custodian
    of (none unless it has no problem)."""
    who = str(record.get("identity"))
    entry, where = _proven_entry(
        record, f"{NAME}: the acknowledgement by {who}", size=size, root=root, period=period
    )
    if entry is None:
        return [where], []
    problems = []
    if entry.get("actor") != who:
        problems.append(f"{where}: the audit entry was recorded for {entry.get('actor')}")
    details = _details(entry)
    problems += [
        f"{where}: its {field} differs from the one the audit entry recorded"
        for field in _RECORDED
        if record.get(field) != details.get(field)
    ]
    text = str(details.get("statement", ""))
    try:
        statement = load_json(text)
    except ValueError:
        statement = None
    if not isinstance(statement, dict) or statement.get("type") != STATEMENT_TYPE:
        return [*problems, f"{where}: the recorded statement is not a custody statement"], []
    keys = statement.get("keys")
    if statement.get("identity") != entry.get("actor"):
        problems.append(f"{where}: the statement is about {statement.get('identity')}")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        problems.append(f"{where}: the statement names no key")
        keys = []
    problems += _order_problems(entry, record["index"], span, where)
    problems += _date_problems(statement, entry, where)
    problems += _key_problems(
        entry, statement, text=text, where=where, index=record["index"], policies=policies
    )
    return problems, ([] if problems else keys)


def _ceremony_actors(
    period: dict[int, str], since: dict[str, int], size: int, report: Report
) -> None:
    """A report line (not a verdict: a period before the vault refused them may hold
    some) on whether each counted key ceremony proposal or approval of the period was by
    an officer who had acknowledged custody before it (PCI DSS 3.7.8; the vault refuses
    the others since `custody_not_acknowledged`)."""
    actions = []
    for index, payload in sorted(period.items()):
        try:
            entry = _entry(payload)
        except ValueError:
            continue
        if entry.get("action") in _CEREMONY_ACTIONS and entry.get("outcome") == "success":
            actions.append((index, str(entry.get("actor")), str(entry.get("action"))))
    without = [f"{who} ({what}, entry {i})" for i, who, what in actions if since.get(who, size) > i]
    report.summary["ceremony_actions_without_custody"] = without
    report.checks.append(
        f"{len(actions)} key ceremony proposals and approvals in the period, "
        + (
            f"{len(without)} by an officer with no custody acknowledgement before it: "
            + "; ".join(without)
            if without
            else "each by an officer who had acknowledged key custody before it"
        )
    )


def check_custody(files: Files, manifest: dict[str, Any], heads: Heads, report: Report) -> None:
    """Check every acknowledgement in ``keys/custody.json`` (see the module docstring),
    report each problem, and put the custodians of each key in the report's summary."""
    size = manifest["covering_head"]["tree_size"]
    head = heads.get(size)
    if head is None:
        return  # already reported by the entries check
    data = files.get(NAME)
    try:
        records = load_json(data) if data is not None else None
    except MalformedBundle as exc:  # a key twice, NaN, too deep: named
        report.fail(f"{NAME}: not a JSON list of acknowledgements a bundle holds: {exc}")
        return
    except ValueError:
        records = None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        report.fail(f"{NAME}: missing or not a JSON list of acknowledgements")
        return
    root = base64.b64decode(head["root_hash"])
    period = {
        e["index"]: e["payload"]
        for e in json_lines(files.get("audit/entries.jsonl", b""))
        if isinstance(e.get("index"), int) and isinstance(e.get("payload"), str)
    }
    policies = _policies(files)
    span = (
        manifest["entries"]["first_index"],
        manifest["entries"]["end_index"],
        str(manifest["period"]["from"]),
        str(manifest["period"]["to"]),
    )
    problems: list[str] = []
    custodians: dict[str, set[str]] = {}
    since: dict[str, int] = {}  # each officer's first sound acknowledgement (its entry)
    for record in records:
        found, keys = _check_record(
            record, size=size, root=root, period=period, policies=policies, span=span
        )
        problems += found
        for key in keys:
            custodians.setdefault(key, set()).add(str(record.get("identity")))
        if keys:
            who = str(record.get("identity"))
            since[who] = min(since.get(who, size), int(record["index"]))
    listed = {r.get("index") for r in records if isinstance(r.get("index"), int)}
    problems += [
        f"{NAME}: the custody acknowledgement at entry {index} is missing"
        for index, payload in sorted(period.items())
        if _action(payload) == ACKNOWLEDGE and index not in listed
    ]
    report.summary["custodians"] = {k: sorted(v) for k, v in sorted(custodians.items())}
    _ceremony_actors(period, since, size, report)
    for problem in problems:
        report.fail(problem)
    if not problems:
        named = "; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in sorted(custodians.items()))
        report.passed(
            "custody",
            f"{len(records)} custody acknowledgements are log entries signed by the "
            f"officers' registered MFA keys (custodians: {named or 'none'})",
        )
