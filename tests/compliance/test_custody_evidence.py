"""Key custodians' acknowledgements in evidence bundles (PCI DSS 3.6.1.2, 3.7.8): the
offline verifier checks each one against the officer's MFA key registered in the policy
in force and against the audit entry that recorded it, and lists the custodians of each
key. The tampering is done by the operator who holds the HSM PIN: every changed file is
re-hashed into the manifest and the manifest re-signed with the vault's own audit key,
so only the custody check stands between the forgery and VERIFIED."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from audit.log import DetailValue
from cofre_evidence_verifier.custody import STATEMENT_DATE_SKEW as VERIFIER_DATE_SKEW
from cofre_evidence_verifier.report import render_text
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.officers import SigningOfficer, software_officers
from tests.support.vault_evidence import (
    VAULT_ORIGIN,
    export_to,
    members,
    resigned,
    verify_by_vault_key,
    write_entry,
)
from vault.custody import ACKNOWLEDGE, STATEMENT_DATE_SKEW, custody_statement

ALICE = "spiffe://cofre/officer-alice"
BOB = "spiffe://cofre/officer-bob"
KEYS = ["cofre-audit-v1", "cofre-fp-v1", "cofre-kek-v1"]


def _acknowledge(vault: VaultServer, name: str) -> dict[str, Any]:
    officer = software_officers()[name]
    with vault.client(name) as c:
        statement = c.get("/v1/admin/keys/custody/statement").json()["statement"]
        signature = base64.b64encode(officer.sign(statement.encode())).decode()
        answer = c.post(
            "/v1/admin/keys/custody", json={"statement": statement, "signature": signature}
        )
    assert answer.status_code == 201, answer.text
    recorded: dict[str, Any] = answer.json()
    return recorded


@pytest.fixture(scope="module")
def acknowledged(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> Iterator[tuple[VaultServer, Path, datetime]]:
    tmp = tmp_path_factory.mktemp("custody")
    # Nobody acknowledges before the period: the acknowledgements are what it is about.
    with running_vault(tmp, hsm_provider, custodians=()) as vault:
        started = datetime.now(UTC) - timedelta(seconds=5)
        with vault.client("payments") as c:
            assert c.post(
                "/v1/tokenize", json={"pan": "4111111111111111", "format": "uuid"}
            ).is_success
        _acknowledge(vault, "officer-alice")
        _acknowledge(vault, "officer-bob")
        yield vault, export_to(vault, started, tmp / "genuine.tar.gz"), started


def _forge(
    vault: VaultServer,
    bundle: Path,
    out: Path,
    change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
) -> Path:
    """`bundle` with keys/custody.json changed by `change`, its manifest re-hashed and
    re-signed with the vault's own audit key (the HSM PIN holder can do that)."""
    records = json.loads(members(bundle)["keys/custody.json"])
    forged = json.dumps(change(records), indent=2).encode()
    return resigned(vault, bundle, out, {"keys/custody.json": forged})


def _alice(records: list[dict[str, Any]]) -> dict[str, Any]:
    [record] = [r for r in records if r["identity"] == ALICE]
    return record


def _log_acknowledgement(vault: VaultServer, statement: str, signer: SigningOfficer) -> None:
    """Alice's acknowledgement of `statement`, signed by `signer`, written straight into
    the audit log as the vault records one (whoever can write to the database can)."""
    details: dict[str, DetailValue] = {
        "statement": statement,
        "signature": base64.b64encode(signer.sign(statement.encode())).decode(),
        "keyid": signer.keyid,
        "public_key": signer.pem,
    }
    write_entry(vault, ACKNOWLEDGE, ALICE, None, details)


def test_genuine_acknowledgements_verify_and_name_the_custodians(
    acknowledged: tuple[VaultServer, Path, datetime],
) -> None:
    vault, bundle, _ = acknowledged
    report = verify_by_vault_key(bundle, vault)
    assert report.ok, report.problems
    assert report.summary["custodians"] == {key: [ALICE, BOB] for key in KEYS}
    assert "custody" in report.passed_checks
    text = render_text(report)
    assert "custodians" in text
    assert "officer-bob" in text
    records = json.loads(members(bundle)["keys/custody.json"])
    assert [json.loads(r["payload"])["action"] for r in records] == [ACKNOWLEDGE] * 2


def _changed_key_label(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    record = _alice(records)
    statement = json.loads(record["statement"])
    statement["keys"] = ["cofre-kek-v2"]
    record["statement"] = json.dumps(statement, sort_keys=True, separators=(",", ":"))
    return records


def _changed_officer(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    _alice(records)["identity"] = "spiffe://cofre/officer-mallory"
    return records


def _resigned_by_bob(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    bob = software_officers()["officer-bob"]
    record = _alice(records)
    record["signature"] = base64.b64encode(bob.sign(record["statement"].encode())).decode()
    record["public_key"], record["keyid"] = bob.pem, bob.keyid
    return records


def _no_audit_entry(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for field in ("index", "payload", "proof"):
        del _alice(records)[field]
    return records


def _entry_elsewhere(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # An acknowledgement that claims a leaf the log holds something else at.
    _alice(records)["index"] -= 1
    return records


def _dropped(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["identity"] != ALICE]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_changed_key_label, "its statement differs from the one the audit entry recorded"),
        (_changed_officer, "the audit entry was recorded for spiffe://cofre/officer-alice"),
        (_resigned_by_bob, "its signature differs from the one the audit entry recorded"),
        (_no_audit_entry, f"the acknowledgement by {ALICE} has no audit entry"),
        (_entry_elsewhere, "its audit entry is not in the log"),
        (_dropped, "the custody acknowledgement at entry"),
    ],
    ids=["key-label", "officer", "re-signed", "no-entry", "other-entry", "dropped"],
)
def test_tampered_acknowledgement_fails_naming_it(
    acknowledged: tuple[VaultServer, Path, datetime],
    tmp_path: Path,
    change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    expected: str,
) -> None:
    vault, bundle, _ = acknowledged
    report = verify_by_vault_key(_forge(vault, bundle, tmp_path / "forged.tar.gz", change), vault)
    assert not report.ok
    assert "custody" in report.missing_checks()
    assert any(p.startswith("keys/custody.json: ") and expected in p for p in report.problems), (
        report.problems
    )
    # Nothing else gives the forgery away: only the custody check fails.
    assert all(p.startswith("keys/custody.json: ") for p in report.problems), report.problems


def test_acknowledgement_the_log_holds_but_someone_else_signed(
    acknowledged: tuple[VaultServer, Path, datetime], tmp_path: Path
) -> None:
    """An acknowledgement written straight into the audit log (by whoever can write to
    the database) with Bob's signature over Alice's statement: the log vouches for it,
    the officer's registered key does not."""
    vault, bundle, started = acknowledged
    genuine = _alice(json.loads(members(bundle)["keys/custody.json"]))
    _log_acknowledgement(vault, genuine["statement"], software_officers()["officer-bob"])
    report = verify_by_vault_key(export_to(vault, started, tmp_path / "later.tar.gz"), vault)
    assert not report.ok
    assert any(
        "signature does not verify under spiffe://cofre/officer-alice's registered MFA key" in p
        for p in report.problems
    ), report.problems
    # The genuine acknowledgements still count; the forged one makes no custodian.
    assert report.summary["custodians"]["cofre-kek-v1"] == [ALICE, BOB]


def test_an_old_acknowledgement_replayed_into_the_log_fails(
    acknowledged: tuple[VaultServer, Path, datetime], tmp_path: Path
) -> None:
    """Alice's genuine signature over a statement dated three days before its entry
    (an old acknowledgement, or one signed ahead, written straight into the log by
    whoever can write to the database): the vault refuses such a date at submission,
    the verifier fails it too, with the vault's own bound."""
    vault, bundle, started = acknowledged
    assert STATEMENT_DATE_SKEW == VERIFIER_DATE_SKEW
    genuine = json.loads(_alice(json.loads(members(bundle)["keys/custody.json"]))["statement"])
    old = (datetime.now(UTC) - timedelta(days=3)).date()
    statement = custody_statement(ALICE, genuine["role"], genuine["keys"], old).decode()
    _log_acknowledgement(vault, statement, software_officers()["officer-alice"])
    report = verify_by_vault_key(export_to(vault, started, tmp_path / "replayed.tar.gz"), vault)
    assert not report.ok
    assert any(
        p.startswith(f"keys/custody.json: the acknowledgement by {ALICE}")
        and f"the statement is dated {old.isoformat()}, more than 1 day from its entry" in p
        for p in report.problems
    ), report.problems
    assert report.summary["custodians"]["cofre-kek-v1"] == [ALICE, BOB]


def test_both_command_line_verifiers_name_the_forged_acknowledgement(
    acknowledged: tuple[VaultServer, Path, datetime], tmp_path: Path
) -> None:
    """`cofre-verify` (the auditor's standalone verifier) and `cofre evidence verify` run
    the same checks: exit 1, the acknowledgement named; the genuine bundle lists the
    custodians."""
    vault, bundle, _ = acknowledged
    forged = _forge(vault, bundle, tmp_path / "forged.tar.gz", _changed_key_label)
    pem = tmp_path / "audit.pem"
    pem.write_bytes(vault.runtime.sequencer.signer.public_key_pem())
    for command in (("-m", "cofre_evidence_verifier"), ("-m", "cofre_cli", "evidence", "verify")):
        args = [sys.executable, *command, "--public-key", str(pem), "--unsafe-no-witness"]
        args += ["--origin", VAULT_ORIGIN]
        bad = subprocess.run(
            [*args, str(forged)], capture_output=True, text=True, timeout=120, check=False
        )
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert f"FAIL  keys/custody.json: the acknowledgement by {ALICE}" in bad.stdout
        good = subprocess.run(
            [*args, str(bundle)], capture_output=True, text=True, timeout=120, check=False
        )
        assert good.returncode == 0, good.stdout + good.stderr
        assert "custodians:" in good.stdout


def test_the_report_names_a_ceremony_action_by_an_officer_who_never_acknowledged(
    acknowledged: tuple[VaultServer, Path, datetime], tmp_path: Path
) -> None:
    """PCI DSS 3.7.8 from the bundle: a line counts the period's key ceremony proposals
    and approvals and names any by an officer with no acknowledgement before it. The
    vault refuses those now (`custody_not_acknowledged`); Mallory's is written straight
    into the log, as only the database's writer (or an older vault) could."""
    vault, _, started = acknowledged
    with vault.client("officer-alice") as alice:  # acknowledged in the fixture
        proposed = alice.post("/v1/admin/keys/rotations", json={"kind": "fingerprint"})
        assert proposed.status_code == 201, proposed.text
        cancelled = alice.post(f"/v1/admin/keys/rotations/{proposed.json()['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
    mallory = "spiffe://cofre/officer-mallory"
    write_entry(vault, "key.rotation.propose", mallory, "c-1", {"kind": "kek"})
    report = verify_by_vault_key(export_to(vault, started, tmp_path / "actors.tar.gz"), vault)
    [named] = report.summary["ceremony_actions_without_custody"]
    assert named.startswith(f"{mallory} (key.rotation.propose, entry "), named
    assert any(
        line.startswith("2 key ceremony proposals and approvals in the period, 1 by an officer")
        and mallory in line
        for line in report.checks
    ), report.checks


def test_statements_naming_destroyed_versions_and_those_in_force_both_verify(
    acknowledged: tuple[VaultServer, Path, datetime], tmp_path: Path
) -> None:
    """Session 35: the vault's statement names the key versions in force; one recorded
    before named every version registered, destroyed ones too. A bundle holding both
    shapes verifies each, and the older one makes its officer custodian of what it names."""
    vault, _, started = acknowledged
    alice = software_officers()["officer-alice"]
    with vault.client("officer-alice") as c:
        asked = json.loads(c.get("/v1/admin/keys/custody/statement").json()["statement"])
    # The versions in force and two destroyed since (as the older vault listed them).
    every = [*asked["keys"], "cofre-fp-v7", "cofre-kek-v5"]
    older = custody_statement(ALICE, asked["role"], every, datetime.now(UTC).date()).decode()
    details: dict[str, DetailValue] = {
        "signature": base64.b64encode(alice.sign(older.encode())).decode(),
        "keyid": alice.keyid,
        "public_key": alice.pem,
    }
    write_entry(vault, ACKNOWLEDGE, ALICE, None, details, document=older)  # as the vault did
    bundle = export_to(vault, started, tmp_path / "both.tar.gz")
    records = json.loads(members(bundle)["keys/custody.json"])
    [index] = [r["index"] for r in records if r["statement"] == older]
    # Bob's, from the fixture: a statement of the versions in force (other tests of the
    # module write forged ones of Alice's into the same log).
    [(current, keys)] = [
        (r["index"], json.loads(r["statement"])["keys"]) for r in records if r["identity"] == BOB
    ]
    assert keys == KEYS
    report = verify_by_vault_key(bundle, vault)
    for entry in (index, current):
        assert not [p for p in report.problems if f"(entry {entry})" in p], report.problems
    assert ALICE in report.summary["custodians"]["cofre-kek-v5"]
    assert ALICE in report.summary["custodians"]["cofre-kek-v1"]
