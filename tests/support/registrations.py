"""Why the key registry does or does not count a label's officer-signed record.

Session 45: CI (not a local run, not 50 local repetitions, not a loaded machine) once
saw a `register` ceremony complete and the registry still take the forged record of
its label (tokenize and the export answered 503 `hsm_key_unregistered`), in two tests
at once. A failure of that kind now says, for each `key.register` record of the
label, what `vault._signed_registration` finds wrong with its officers' signatures
(or that it counts them), so the next one names its cause.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from audit.retention import record_details
from policies.engine import PolicyEngine
from policies.errors import PolicyDenied
from tests.api.conftest import VaultServer
from vault._signed_registration import signed_registration_time
from vault.approval_proof import approval_problem, proposal_problem
from vault.key_registry import REGISTER_RECORDS
from vault.officer_mfa import server_names

__all__ = ["registration_report", "served_registration_report"]


def _officer_pem(policy: PolicyEngine, officer: object) -> bytes | None:
    try:
        rules = policy.rules_for(str(officer))
    except PolicyDenied:
        return None
    return None if rules.mfa_public_key is None else rules.mfa_public_key.encode()


def _why(
    details: dict[str, Any],
    document: object,
    policy: PolicyEngine,
    authorities: Collection[str] | None,
) -> str:
    try:
        parsed = json.loads(document) if isinstance(document, str) else None
    except ValueError:
        return "its document is not JSON"
    if not isinstance(parsed, dict):
        return "no signed document"
    proposal = parsed.get("proposal") or {}
    ceremony = str(details.get("ceremony"))
    pem = _officer_pem(policy, proposal.get("officer"))
    parts = [f"proposer {proposal.get('officer')!r}: key {'found' if pem else 'MISSING'}"]
    if pem is not None:
        problem = proposal_problem(proposal.get("proof"), pem, ceremony, "register", authorities)
        parts.append(f"proposal: {problem or 'verifies'}")
    for approval in parsed.get("approvals") or []:
        pem = _officer_pem(policy, approval.get("officer"))
        problem = (
            "no key"
            if pem is None
            else approval_problem(approval.get("proof"), pem, ceremony, authorities)
        )
        parts.append(f"approval by {approval.get('officer')!r}: {problem or 'verifies'}")
    return "; ".join(parts)


def registration_report(
    engine: Engine,
    policy: PolicyEngine,
    label: str,
    authorities: Collection[str] | None = None,
) -> str:
    """One line per `key.register` record of `label` in `engine`'s log: its details and
    whether its officers' signatures prove it now, and if not why."""
    with engine.connect() as connection:
        payloads = connection.execute(
            sa.text(f"SELECT id, payload FROM audit_entries WHERE {REGISTER_RECORDS} ORDER BY id")
        ).all()
    lines = [
        f"key.register records of {label!r} (policy quorum {policy.policy.key_approvals_required}):"
    ]
    for entry_id, payload in payloads:
        parsed = record_details(payload)
        if parsed is None:
            lines.append(f"  #{entry_id}: not a vault record")
            continue
        record, details = parsed
        if details.get("label") != label:
            continue
        document = record.get("document")
        at = signed_registration_time(details, document, policy, authorities)
        shown = {k: details.get(k) for k in ("cka_id", "check", "how", "ceremony")}
        why = "" if document is None else f" [{_why(details, document, policy, authorities)}]"
        lines.append(f"  #{entry_id} {shown}: signed at {at}{why}")
    return "\n".join(lines)


def served_registration_report(vault: VaultServer, label: str) -> str:
    """`registration_report` of a served test vault, under its policy in force and the
    names its server certificate lists (the authorities its registry checks)."""
    names = server_names(vault.pki.server_cert.read_bytes())
    policy = vault.runtime.service.policy
    return registration_report(vault.runtime.engine, policy, label, names)
