"""Session 37 (attack on the verifier's reading of names): an officer who is a lookalike.

The operator holds the database and the HSM PIN. Officer keys are registered by policy
versions, log entries the operator can write (the documented bound of review 27 A4: a
key registered before both the period and the proposal is taken as the officer's). The
auditor's defence is to read who the counted officers are. A policy version logged
before the period that registers ``spiffe://cofre/officer-b\\u043eb`` (a Cyrillic o, U+043E) with
a key of the operator's own made a ceremony of Alice and that "Bob" proven, and the
report, which escapes control and format characters but not letters, drew the name as
``officer-bob``. No client certificate can carry that identity: a URI subjectAltName is
an IA5String (RFC 5280 4.2.1.6, ASCII), and the vault takes identities from it alone
(`api.tls.identity_from_pem`). So check 6c does not count an officer whose identity is
not printable ASCII, and says why. Real SoftHSM2 token, SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from audit.log import AuditLog
from cofre_evidence_verifier.report import Report
from tests.api.conftest import VaultServer
from tests.support.officers import new_software_officer, signed_approval, signed_proposal
from tests.support.officers import software_officers as _officers
from tests.support.vault_evidence import export_to, verify_by_vault_key, write_entry
from vault.policy_record import policy_event

ALICE = "spiffe://cofre/officer-alice"
LOOKALIKE = "spiffe://cofre/officer-b\u043eb"  # Cyrillic small letter o


def _ceremony_with(vault: VaultServer, officer: str, tmp_path: Path) -> tuple[str, Report]:
    """Register `officer` (a key of the operator's) in a policy.reload written before the
    period, then log Alice's genuine proposal, `officer`'s approval and the start."""
    policy_file = vault.runtime.settings.policy_file
    assert policy_file is not None
    mallory = new_software_officer("mallory")
    forged = (
        policy_file.read_text()
        + f'\n[identities."{officer}"]\nrole = "security_officer"\noperations = ["key_admin"]\n'
        + f'mfa_public_key = """\n{mallory.pem.strip()}\n"""\n'
    )
    with vault.runtime.engine.begin() as connection:
        AuditLog().append(
            connection,
            policy_event("policy.reload", actor="cofre", source=str(policy_file), text=forged),
        )
    since = datetime.now(UTC)
    proposal = signed_proposal(_officers()["officer-alice"], "kek")
    ceremony = proposal.ceremony_id()
    write_entry(vault, "key.rotation.propose", ALICE, ceremony, {"kind": "kek"}, proposal.to_json())
    approval = signed_approval(mallory, ceremony).to_json()
    write_entry(vault, "key.rotation.approve", officer, ceremony, {"approvals": 1}, approval)
    details = {"kind": "kek", "old_version": 1, "new_version": 2, "records": 0}
    write_entry(vault, "key.rotation.start", officer, ceremony, details)
    report = verify_by_vault_key(export_to(vault, since, tmp_path / "b.tar.gz"), vault)
    return ceremony, report


def test_a_lookalike_officer_no_certificate_can_carry_does_not_count(
    vault: VaultServer, tmp_path: Path
) -> None:
    ceremony, report = _ceremony_with(vault, LOOKALIKE, tmp_path)
    assert not report.ok, "Alice and a Cyrillic 'officer-b\\u043eb' of the operator's: VERIFIED"
    listed = {c["ceremony"]: c for c in report.summary.get("dual_control", [])}
    assert listed[ceremony]["proven"] is False
    assert any("not printable ASCII" in p and "\\u043e" in p for p in report.problems), (
        report.problems
    )
