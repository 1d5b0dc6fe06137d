"""Review 27 (attack): evidence dual control, check 6c (`cofre_evidence_verifier.dual_control`).

The attacker is the operator who holds the database and the HSM PIN (writes any audit
entry, which the sequencer signs into the log; chooses what the exporter includes;
re-signs a bundle's manifest), or one rogue officer. A test that shows a finding fails
on the code as it is; a documented bound is `xfail(strict=True)`; the rest confirm a
property. Real SoftHSM2 token, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from audit.log import AuditLog, DetailValue
from audit.sequencer import SEQUENCER_LOCK_KEY
from cofre.errors import CofreError
from cofre_evidence_verifier.report import Report
from tests.api.conftest import VaultServer
from tests.support.officers import (
    new_software_officer,
    signed_action,
    signed_approval,
    signed_kek_ceremony,
    signed_proposal,
    software_officers,
)

# The evidence helpers under the short names this file's tests were written with.
from tests.support.vault_evidence import export_to as _export
from tests.support.vault_evidence import members as _members
from tests.support.vault_evidence import resigned as _resigned
from tests.support.vault_evidence import verify_by_vault_key as _verify
from tests.support.vault_evidence import write_entry as _write
from tests.support.vault_evidence import write_handover as _write_handover
from vault.approval_proof import PROPOSALS, approval_path
from vault.policy_record import policy_event

ALICE, BOB = "spiffe://cofre/officer-alice", "spiffe://cofre/officer-bob"
CAROL = "spiffe://cofre/officer-carol"
ROTATIONS = "/v1/admin/keys/rotations"


def _start(
    vault: VaultServer, ceremony: str, kind: str, new_version: int, actor: str = BOB
) -> None:
    details: dict[str, DetailValue] = {
        "kind": kind,
        "old_version": new_version - 1,
        "new_version": new_version,
        "records": 0,
    }
    _write(vault, "key.rotation.start", actor, ceremony, details)


def _write_ceremony(vault: VaultServer, ceremony: str, proposal: str, approval: str) -> None:
    """A kek ceremony's entries as the vault writes them: Alice's proposal and Bob's
    approval (their stored signed requests, as given) and the start to version 2."""
    _write(vault, "key.rotation.propose", ALICE, ceremony, {"kind": "kek"}, proposal)
    _write(vault, "key.rotation.approve", BOB, ceremony, {"approvals": 1}, approval)
    _start(vault, ceremony, "kek", 2)


def _genuine(vault: VaultServer, kind: str = "kek", new_version: int = 2) -> str:
    """A ceremony the officers really ran: Alice's signed proposal, Bob's signed
    approval and its start, written as the vault writes them. Returns its id."""
    officers = software_officers()
    proposal = signed_proposal(officers["officer-alice"], kind)
    ceremony = proposal.ceremony_id()
    _write(vault, "key.rotation.propose", ALICE, ceremony, {"kind": kind}, proposal.to_json())
    approval = signed_approval(officers["officer-bob"], ceremony)
    _write(vault, "key.rotation.approve", BOB, ceremony, {"approvals": 1}, approval.to_json())
    _start(vault, ceremony, kind, new_version)
    return ceremony


def _listed(report: Report) -> dict[str, dict[str, object]]:
    return {c["ceremony"]: c for c in report.summary.get("dual_control", [])}


# --------------------------------------------------------------------------- findings


def test_a_second_start_of_a_ceremony_started_before_the_period_fails(
    vault: VaultServer, tmp_path: Path
) -> None:
    """FINDING (high). Alice and Bob approved one kek rotation; it started just before
    the period (e.g. yesterday's daily bundle). The operator writes a second
    `key.rotation.start` of that same ceremony inside the period, within the proposal's
    life: a second rotation nobody approved. The exporter, honest here, even puts the
    first start in keys/dual_control.json; the verifier only looks for a second start
    among the period's own entries, so the bundle is VERIFIED."""
    ceremony = _genuine(vault, "kek", 2)
    since = datetime.now(UTC)
    time.sleep(0.01)
    _start(vault, ceremony, "kek", 3)  # the operator's rotation, no officer asked
    bundle = _export(vault, since, tmp_path / "restart.tar.gz")
    records = json.loads(_members(bundle)["keys/dual_control.json"])
    starts = [r for r in records if '"action":"key.rotation.start"' in r["payload"]]
    assert len(starts) == 2, "the exporter gave the verifier both starts"
    report = _verify(bundle, vault)
    assert not report.ok, "one approval, two rotations: VERIFIED"
    assert _listed(report)[ceremony]["proven"] is False


def test_a_start_long_after_the_approval_completing_the_quorum_fails(
    vault: VaultServer, tmp_path: Path
) -> None:
    """A1, the exporter's half: the operator leaves the first start of a ceremony out
    of the bundle (here, never written) and starts it again later. The vault starts a
    rotation in the transaction of the approval that completes its quorum, so a start
    more than the MFA window (300 s) after that approval's signature is not its."""
    officers = software_officers()
    now = int(time.time())
    proposal = signed_proposal(officers["officer-alice"], "kek", created=now - 600)
    ceremony = proposal.ceremony_id()
    approval = signed_action(officers["officer-bob"], approval_path(ceremony), created=now - 400)
    since = datetime.now(UTC)
    _write_ceremony(vault, ceremony, proposal.to_json(), approval.to_json())
    report = _verify(_export(vault, since, tmp_path / "late.tar.gz"), vault)
    assert not report.ok
    assert any("completing its quorum" in p for p in report.problems), report.problems


def test_a_handover_is_tied_to_the_ceremony_it_names_not_to_a_later_start(
    vault: VaultServer, tmp_path: Path
) -> None:
    """FINDING (medium). An audit-key rotation is linked to its handover by "the last
    audit start before it by the same officer to that key version", not by the
    ceremony the handover names. Alice and Bob approved an audit rotation to v2; the
    operator writes a second start of that ceremony to v3 (before the period, so no
    in-period duplicate check sees it) and, in the period, a handover to
    cofre-audit-v3 naming another ceremony: 6c counts the v2 ceremony's signatures for
    the v3 handover."""
    ceremony = _genuine(vault, "audit", 2)
    _start(vault, ceremony, "audit", 3)  # the operator's
    since = datetime.now(UTC)
    time.sleep(0.01)
    nobody_ran = "9e8d7c6b-5a49-4382-9170-6f5e4d3c2b1a"
    _write_handover(vault, BOB, "cofre-audit-v2", "cofre-audit-v3", nobody_ran)
    report = _verify(_export(vault, since, tmp_path / "handover.tar.gz"), vault)
    listed = _listed(report)
    assert ceremony not in listed or listed[ceremony]["proven"] is False, (
        "the v3 handover was proven by the v2 ceremony's officers",
        listed,
    )


def test_a_handover_naming_a_ceremony_nobody_ran_is_not_proven_by_another(
    vault: VaultServer, tmp_path: Path
) -> None:
    """A2 without a second start: Alice and Bob's audit rotation to v3 started before
    the period; in the period the operator writes a handover to cofre-audit-v3 naming a
    ceremony nobody ran. The handover is linked by the ceremony it names, so the real
    ceremony's signatures do not prove it."""
    ceremony = _genuine(vault, "audit", 3)
    since = datetime.now(UTC)
    time.sleep(0.01)
    ceremony_named = "9e8d7c6b-5a49-4382-9170-6f5e4d3c2b1a"
    _write_handover(vault, BOB, "cofre-audit-v2", "cofre-audit-v3", ceremony_named)
    report = _verify(_export(vault, since, tmp_path / "named.tar.gz"), vault)
    assert not report.ok
    assert ceremony not in _listed(report)
    assert any("no start of the ceremony it names" in p for p in report.problems), report.problems


def test_a_proposal_life_from_the_bundle_s_settings_does_not_revive_an_old_ceremony(
    vault: VaultServer, tmp_path: Path
) -> None:
    """FINDING (high). The proposal-life bound that stops a past ceremony's genuine
    proofs being replayed with a new start is read from config/settings.json, a file
    the exporter (the operator) writes and the verifier accepts up to 10^6 hours
    (114 years); the vault itself takes any positive `proposal_ttl_hours`. A ceremony
    Alice and Bob signed 200 days ago, written again with a start today, VERIFIES."""
    officers = software_officers()
    old = int((datetime.now(UTC) - timedelta(days=200)).timestamp())
    proposal = signed_proposal(officers["officer-alice"], "kek", created=old)
    ceremony = proposal.ceremony_id()
    approval = signed_action(officers["officer-bob"], approval_path(ceremony), created=old + 60)
    since = datetime.now(UTC)
    _write_ceremony(vault, ceremony, proposal.to_json(), approval.to_json())
    bundle = _export(vault, since, tmp_path / "old.tar.gz")
    assert not _verify(bundle, vault).ok  # the control: 24 h by the vault's settings
    settings = json.loads(_members(bundle)["config/settings.json"])
    assert settings["keys"]["proposal_ttl_hours"] == 24.0
    settings["keys"]["proposal_ttl_hours"] = 999_999
    forged = _resigned(
        vault,
        bundle,
        tmp_path / "ttl.tar.gz",
        {"config/settings.json": json.dumps(settings, indent=2).encode()},
    )
    report = _verify(forged, vault)
    assert not report.ok, "a 200-day-old ceremony replayed today: VERIFIED"


def test_a_policy_reload_entry_registering_the_operators_key_for_an_officer_fails(
    vault: VaultServer, tmp_path: Path
) -> None:
    """FINDING (high). The officers' MFA keys are read from the policy versions, which
    are only proven to be log entries; the operator can write a `policy.reload` entry
    (the vault never loaded it) registering a key of their own as Bob's, sign Bob's
    approval with it, and write the original policy back after the start. Alice
    (rogue, or her proposal replayed within a day) plus the operator: VERIFIED; the
    only trace is two policy versions in the period, which 6c does not look at."""
    policy_file = vault.runtime.settings.policy_file
    assert policy_file is not None
    genuine = policy_file.read_text()
    bob_pem = software_officers()["officer-bob"].pem.strip()
    assert bob_pem in genuine
    mallory = new_software_officer("officer-bob")
    forged = genuine.replace(bob_pem, mallory.pem.strip())
    since = datetime.now(UTC)
    source = str(policy_file)
    with vault.runtime.engine.begin() as connection:
        AuditLog().append(
            connection, policy_event("policy.reload", actor="cofre", source=source, text=forged)
        )
    proposal = signed_proposal(software_officers()["officer-alice"], "kek")
    ceremony = proposal.ceremony_id()
    approval = signed_approval(mallory, ceremony)  # "Bob", with the operator's key
    _write_ceremony(vault, ceremony, proposal.to_json(), approval.to_json())
    with vault.runtime.engine.begin() as connection:
        AuditLog().append(
            connection, policy_event("policy.reload", actor="cofre", source=source, text=genuine)
        )
    report = _verify(_export(vault, since, tmp_path / "policy.tar.gz"), vault)
    assert not report.ok, "Bob's key swapped for the operator's in a written reload: VERIFIED"
    assert any(f"{BOB}'s mfa_public_key" in p for p in report.problems), report.problems


def test_a_reload_in_the_period_that_leaves_the_ceremony_s_officers_alone_is_proven(
    vault: VaultServer, tmp_path: Path
) -> None:
    """No false failure from the A4 fix: a real reload in the period that registers a
    third officer (not counted in the ceremony) changes nothing 6c relies on."""
    runtime = vault.runtime
    policy_file = runtime.settings.policy_file
    assert policy_file is not None
    carol = new_software_officer("officer-carol")
    since = datetime.now(UTC)
    policy_file.write_text(
        policy_file.read_text()
        + f'\n[identities."{CAROL}"]\nrole = "security_officer"\noperations = ["key_admin"]\n'
        + f'mfa_public_key = """\n{carol.pem.strip()}\n"""\n'
    )
    assert runtime.reload_policy()
    ceremony = _genuine(vault, "kek", 2)
    report = _verify(_export(vault, since, tmp_path / "reload.tar.gz"), vault)
    assert report.ok, report.problems
    assert _listed(report)[ceremony]["proven"] is True


# ------------------------------------------- a documented bound until session 28, fixed


def test_a_ceremony_signed_for_another_vault_fails(vault: VaultServer, tmp_path: Path) -> None:
    """The staging ceremony's signed @authority is compared with the vault's names the
    bundle records (tests/compliance/test_vault_names_evidence.py: with the auditor's
    pin too, which the operator cannot edit)."""
    staging = "staging.vault.example"
    ceremony, proposal, approval = signed_kek_ceremony(authority=staging)
    since = datetime.now(UTC)
    _write_ceremony(vault, ceremony, proposal.to_json(), approval.to_json())
    report = _verify(_export(vault, since, tmp_path / "staging.tar.gz"), vault)
    assert _listed(report)[ceremony]["signed_for"] == [staging]
    assert not report.ok
    assert any(f"signed for {staging}, not this vault" in p for p in report.problems)


# ------------------------------------------------------------------ properties that hold


def test_a_rogue_officer_s_far_future_signature_is_reported_not_a_crash(
    vault: VaultServer, tmp_path: Path
) -> None:
    """Holds. One rogue officer signs an approval dated far ahead (11 digits, year
    5138: a 12-digit `created` is masked by the log's PAN mask and then reported as
    malformed): the check names it "after the start" rather than failing on the date
    (`_at` would raise for a year past 9999, which 11 digits cannot reach)."""
    officers = software_officers()
    proposal = signed_proposal(officers["officer-alice"], "kek")
    ceremony = proposal.ceremony_id()
    approval = signed_action(
        officers["officer-bob"], approval_path(ceremony), created=99_999_999_999
    )
    since = datetime.now(UTC)
    _write_ceremony(vault, ceremony, proposal.to_json(), approval.to_json())
    report = _verify(_export(vault, since, tmp_path / "future.tar.gz"), vault)
    assert not report.ok
    assert any("after the start" in p for p in report.problems), "\n".join(report.problems)


def test_duplicate_keys_in_a_stored_request_do_not_move_its_signature(
    vault: VaultServer, tmp_path: Path
) -> None:
    """A stored request with a second "path" (JSON's last one wins) still has its
    signature checked over the path the ceremony's id gives: Bob's approval of another
    ceremony, with this ceremony's path appended as a duplicate key, does not count."""
    officers = software_officers()
    proposal = signed_proposal(officers["officer-alice"], "kek")
    ceremony = proposal.ceremony_id()
    other = signed_approval(officers["officer-bob"], "0c6f3a8e-1111-4a2b-9c3d-4e5f6a7b8c9d")
    stored = other.to_json()
    assert stored.endswith("}")
    doubled = stored[:-1] + f', "path": "{approval_path(ceremony)}"}}'
    since = datetime.now(UTC)
    _write_ceremony(vault, ceremony, proposal.to_json(), doubled)
    report = _verify(_export(vault, since, tmp_path / "dup.tar.gz"), vault)
    assert not report.ok
    assert _listed(report)[ceremony]["proven"] is False


def test_leaving_a_ceremony_s_records_out_only_fails_it(vault: VaultServer, tmp_path: Path) -> None:
    """The exporter chooses the records from before the period, but a start of the
    period is among its proven entries: with the proposal and approval left out of
    keys/dual_control.json (the operator's choice) the ceremony is not proven."""
    ceremony, proposal, approval = signed_kek_ceremony()
    _write(vault, "key.rotation.propose", ALICE, ceremony, {"kind": "kek"}, proposal.to_json())
    _write(vault, "key.rotation.approve", BOB, ceremony, {"approvals": 1}, approval.to_json())
    since = datetime.now(UTC)
    time.sleep(0.01)
    _start(vault, ceremony, "kek", 2)
    bundle = _export(vault, since, tmp_path / "b.tar.gz")
    assert _verify(bundle, vault).ok
    emptied = _resigned(vault, bundle, tmp_path / "e.tar.gz", {"keys/dual_control.json": b"[]"})
    report = _verify(emptied, vault)
    assert not report.ok
    assert _listed(report)[ceremony]["proven"] is False


def test_a_genuine_three_officer_ceremony_with_skewed_clocks_is_proven(
    vault: VaultServer, tmp_path: Path
) -> None:
    """No false failure: quorum 3 (a third officer registered by a real reload), Bob's
    clock 250 s behind Alice's (his approval "before" her proposal) and Carol's 250 s
    ahead of the vault's (her approval "after" the start)."""
    runtime = vault.runtime
    policy_file = runtime.settings.policy_file
    assert policy_file is not None
    carol = new_software_officer("officer-carol")
    policy_file.write_text(
        "key_approvals_required = 3\n"
        + policy_file.read_text()
        + f'\n[identities."{CAROL}"]\nrole = "security_officer"\noperations = ["key_admin"]\n'
        + f'mfa_public_key = """\n{carol.pem.strip()}\n"""\n'
    )
    assert runtime.reload_policy()
    officers = software_officers()
    now = int(time.time())
    proposal = signed_proposal(officers["officer-alice"], "kek", created=now)
    ceremony = proposal.ceremony_id()
    bob = signed_action(officers["officer-bob"], approval_path(ceremony), created=now - 250)
    late = signed_action(carol, approval_path(ceremony), created=now + 250)
    since = datetime.now(UTC)
    _write(vault, "key.rotation.propose", ALICE, ceremony, {"kind": "kek"}, proposal.to_json())
    _write(vault, "key.rotation.approve", BOB, ceremony, {"approvals": 1}, bob.to_json())
    _write(vault, "key.rotation.approve", CAROL, ceremony, {"approvals": 2}, late.to_json())
    _start(vault, ceremony, "kek", 2, actor=CAROL)
    report = _verify(_export(vault, since, tmp_path / "three.tar.gz"), vault)
    assert report.ok, report.problems
    assert _listed(report)[ceremony]["officers"] == 3


def test_a_cancelled_ceremony_proposed_again_is_proven(vault: VaultServer, tmp_path: Path) -> None:
    """No false failure: through the API, Alice proposes, cancels and proposes again;
    Bob approves the second. Only the started ceremony is checked, and it is proven.
    A data rotation: a kek one would leave its new key on the HSM token the other
    tests share (a later test then found kek-v3 where it expects v1)."""
    since = datetime.now(UTC)
    with vault.client("officer-alice") as c:
        first = c.post(ROTATIONS, json={"kind": "data"})
        assert first.status_code in (200, 201), first.text
        cancelled = c.post(f"{ROTATIONS}/{first.json()['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        second = c.post(ROTATIONS, json={"kind": "data"})
        assert second.status_code in (200, 201), second.text
    ceremony = second.json()["id"]
    assert ceremony != first.json()["id"]
    with vault.client("officer-bob") as c:
        assert c.post(f"{ROTATIONS}/{ceremony}/approve").status_code == 200
    report = _verify(_export(vault, since, tmp_path / "again.tar.gz"), vault)
    assert report.ok, report.problems
    assert list(_listed(report)) == [ceremony]


def test_a_genuine_proposal_cannot_open_a_ceremony_of_another_id(
    vault: VaultServer, tmp_path: Path
) -> None:
    """The proposal entry's key id is the operator's to write; the id the signature
    derives is not: Alice's proposal filed under another ceremony id, approved by Bob
    for that id, fails."""
    officers = software_officers()
    proposal = signed_proposal(officers["officer-alice"], "kek")
    ceremony = "3f1e2d3c-4b5a-4697-8887-766554433221"
    approval = signed_approval(officers["officer-bob"], ceremony)
    since = datetime.now(UTC)
    _write_ceremony(vault, ceremony, proposal.to_json(), approval.to_json())
    report = _verify(_export(vault, since, tmp_path / "id.tar.gz"), vault)
    assert not report.ok
    assert any("another ceremony" in p for p in report.problems), report.problems


def test_a_proposal_signed_for_the_proposals_path_only(vault: VaultServer, tmp_path: Path) -> None:
    """An approval-shaped request of Alice's (POST .../approve with a kind body) is not
    a proposal, even if its derived id is the ceremony's."""
    officers = software_officers()
    body = json.dumps({"kind": "kek"}).encode()
    wrong = signed_action(officers["officer-alice"], PROPOSALS + "/x/approve", body)
    ceremony = wrong.ceremony_id()
    approval = signed_approval(officers["officer-bob"], ceremony)
    since = datetime.now(UTC)
    _write_ceremony(vault, ceremony, wrong.to_json(), approval.to_json())
    assert not _verify(_export(vault, since, tmp_path / "p.tar.gz"), vault).ok


# ----------------------------------------------------------------------- the drain's wait


# The advisory lock is PostgreSQL's: the test runs there only (selected, not skipped).
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_drain_waiting_for_a_held_sequencer_lock_ends_within_the_statement_timeout(
    vault: VaultServer,
) -> None:
    """The drain now waits for the sequencer's advisory lock (PostgreSQL): held forever
    by another session (a node stuck mid-batch), the drain must not hang; the 5 s
    statement timeout ends the wait with an error the export reports."""
    engine = vault.runtime.engine
    assert engine.dialect.name == "postgresql"
    outcome: list[object] = []
    with engine.connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": SEQUENCER_LOCK_KEY})
        try:

            def drain() -> None:
                try:
                    outcome.append(vault.runtime.sequencer.drain())
                except CofreError as exc:
                    outcome.append(exc)

            worker = threading.Thread(target=drain, daemon=True)
            started = time.monotonic()
            worker.start()
            worker.join(30)
            waited = time.monotonic() - started
        finally:
            holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": SEQUENCER_LOCK_KEY})
            holder.commit()
    assert not worker.is_alive(), "the drain hung on the sequencer lock"
    assert waited < 15
    assert outcome, outcome
    assert isinstance(outcome[0], CofreError), outcome
