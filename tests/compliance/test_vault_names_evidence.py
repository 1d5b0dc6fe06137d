"""Check 6c compares each officer signature's ``@authority`` with the vault's own names
(`cofre_evidence_verifier.vault_names`): a ceremony run on a staging vault where the same
officers' keys are registered, its entries written into production's log, does not prove
production's rotation.

The attacker is the operator who can write audit entries (the sequencer signs them in)
and re-sign a bundle's manifest with the HSM key. The names the bundle records
(``keys/officer_authorities.json``) are the exporter's; the names the auditor pins
(``--authority``) are the trust anchor. Real SoftHSM2 token, SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from cofre_evidence_verifier.cli import main as cofre_verify
from cofre_evidence_verifier.report import Report
from cofre_evidence_verifier.verify import verify_bundle
from tests.api.conftest import VaultServer
from tests.compliance.test_rev27_dual import _genuine, _write_ceremony
from tests.support.officers import signed_kek_ceremony
from tests.support.vault_evidence import VAULT_ORIGIN, resign_manifest, write_members
from tests.support.vault_evidence import export_to as _export
from tests.support.vault_evidence import members as _members

NAMES = "keys/officer_authorities.json"
STAGING = "staging.vault.example"


def _verify(bundle: Path, vault: VaultServer, pinned: list[str] | None = None) -> Report:
    key = vault.runtime.sequencer.signer.public_key_pem()
    return verify_bundle(
        bundle, key, unsafe_no_witnesses=True, authorities=pinned, origin=VAULT_ORIGIN
    )


def _staging_ceremony(vault: VaultServer) -> str:
    """What the operator copies: Alice's proposal and Bob's approval, signed by their
    genuine tokens for the staging vault, and a start, written into production's log."""
    ceremony, proposal, approval = signed_kek_ceremony(authority=STAGING)
    _write_ceremony(vault, ceremony, proposal.to_json(), approval.to_json())
    return ceremony


def _rebuilt(vault: VaultServer, bundle: Path, out: Path, change: dict[str, bytes | None]) -> Path:
    """`bundle` with the files of `change` replaced (None: removed, with its manifest
    line: what `tests.support.vault_evidence.resigned` cannot do), its manifest
    re-hashed and re-signed with the vault's audit key."""
    files = _members(bundle)
    manifest = json.loads(files["manifest.json"])
    for name, data in change.items():
        if data is None:
            files.pop(name, None)
            manifest["files"] = [f for f in manifest["files"] if f["path"] != name]
        else:
            files[name] = data
    resign_manifest(vault, files, manifest)
    return write_members(out, files)


def _problems(report: Report) -> str:
    return "\n".join(report.problems)


def test_the_bundle_records_the_names_the_vault_takes_as_its_own(
    vault: VaultServer, tmp_path: Path
) -> None:
    """The names of the vault's TLS certificate, as `vault.officer_mfa` checks them;
    the report says what it compared with and where the names come from."""
    since = datetime.now(UTC)
    ceremony = _genuine(vault)
    bundle = _export(vault, since, tmp_path / "b.tar.gz")
    recorded = json.loads(_members(bundle)[NAMES])
    assert sorted(recorded["names"]) == ["127.0.0.1", "localhost"]
    port = httpx.URL(vault.url).port
    assert recorded["ports"] == sorted([443, port])  # the vault's own ports
    report = _verify(bundle, vault)
    assert report.ok, _problems(report)
    names = report.summary["dual_control_vault_names"]
    assert names["compared_with"] == sorted(
        f"{host}:{p}" for host in ("127.0.0.1", "localhost") for p in (443, port)
    )
    assert "records" in names["source"]
    assert "pin them with --authority" in names["source"]
    listed = {c["ceremony"]: c for c in report.summary["dual_control"]}
    assert listed[ceremony]["signed_for"] == ["localhost"]
    assert any("signed for localhost" in line for line in report.checks), report.checks


def test_a_ceremony_pinned_to_the_vault_s_name_verifies(vault: VaultServer, tmp_path: Path) -> None:
    since = datetime.now(UTC)
    _genuine(vault)
    bundle = _export(vault, since, tmp_path / "b.tar.gz")
    for pinned in (["localhost"], ["LOCALHOST:443"], ["vault.example", "localhost"]):
        report = _verify(bundle, vault, pinned)
        assert report.ok, (pinned, _problems(report))
        assert "pinned" in report.summary["dual_control_vault_names"]["source"]


def test_a_ceremony_signed_for_a_name_the_auditor_did_not_pin_fails(
    vault: VaultServer, tmp_path: Path
) -> None:
    """The pin, not the bundle, decides: the genuine ceremony signed for localhost does
    not prove a rotation of the vault the auditor knows as vault.example, nor of
    localhost on another port."""
    since = datetime.now(UTC)
    _genuine(vault)
    bundle = _export(vault, since, tmp_path / "b.tar.gz")
    for pinned in (["vault.example"], ["localhost:8443"], ["127.0.0.1"]):
        report = _verify(bundle, vault, pinned)
        assert not report.ok, pinned
        assert "signed for localhost, not this vault" in _problems(report)


def test_a_staging_ceremony_in_a_bundle_that_lists_the_staging_name_fails_the_pin(
    vault: VaultServer, tmp_path: Path
) -> None:
    """The operator who copied the staging ceremony also re-signs the bundle with the
    staging name added to the vault's names: the bundle alone cannot tell (the report
    shows the staging name), the auditor's pin does."""
    since = datetime.now(UTC)
    ceremony = _staging_ceremony(vault)
    bundle = _export(vault, since, tmp_path / "b.tar.gz")
    names = {"names": ["localhost", STAGING], "source": "edited"}
    forged = _rebuilt(vault, bundle, tmp_path / "f.tar.gz", {NAMES: json.dumps(names).encode()})
    unpinned = _verify(forged, vault)
    assert unpinned.ok, _problems(unpinned)  # the bound: the file is the exporter's
    assert STAGING in unpinned.summary["dual_control_vault_names"]["compared_with"]
    listed = {c["ceremony"]: c for c in unpinned.summary["dual_control"]}
    assert listed[ceremony]["signed_for"] == [STAGING]
    pinned = _verify(forged, vault, ["localhost"])
    assert not pinned.ok
    assert f"signed for {STAGING}, not this vault" in _problems(pinned)


def test_a_bundle_without_the_vault_s_names_proves_no_ceremony_unless_pinned(
    vault: VaultServer, tmp_path: Path
) -> None:
    """Dropping the file (or a bundle from before it) does not make the check pass
    without a comparison: the auditor pins the name."""
    since = datetime.now(UTC)
    _staging_ceremony(vault)
    bundle = _export(vault, since, tmp_path / "b.tar.gz")
    dropped = _rebuilt(vault, bundle, tmp_path / "d.tar.gz", {NAMES: None})
    report = _verify(dropped, vault)
    assert not report.ok
    assert "the auditor pinned none: pin the vault's name with --authority" in _problems(report)
    pinned = _verify(dropped, vault, ["localhost"])
    assert not pinned.ok
    assert f"signed for {STAGING}, not this vault" in _problems(pinned)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cofre_verify_takes_the_pinned_names(vault: VaultServer, tmp_path: Path) -> None:
    since = datetime.now(UTC)
    _genuine(vault)
    bundle = _export(vault, since, tmp_path / "b.tar.gz")
    key = tmp_path / "audit.pem"
    key.write_bytes(vault.runtime.sequencer.signer.public_key_pem())
    common = [
        str(bundle),
        "--public-key",
        str(key),
        "--unsafe-no-witness",
        "--origin",
        VAULT_ORIGIN,
    ]
    assert cofre_verify([*common, "--authority", "localhost"]) == 0
    assert cofre_verify([*common, "--authority", "vault.example"]) == 1
    assert cofre_verify([*common, "--authority", "vault.example", "--authority", "localhost"]) == 0
    assert cofre_verify([*common, "--authority", "user@vault.example"]) == 2


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_ceremony_signed_for_another_port_of_the_vault_s_host_fails(
    vault: VaultServer, tmp_path: Path
) -> None:
    """Staging on the same host name, another port: the bundle records the ports the
    vault is reached by, as the vault compares them."""
    staging = "localhost:9443"
    ceremony, proposal, approval = signed_kek_ceremony(authority=staging)
    since = datetime.now(UTC)
    _write_ceremony(vault, ceremony, proposal.to_json(), approval.to_json())
    report = _verify(_export(vault, since, tmp_path / "b.tar.gz"), vault)
    assert not report.ok
    assert "signed for localhost:9443, not this vault" in _problems(report)
