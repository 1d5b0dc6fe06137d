"""A version-1 key put into use mid-period, with no ceremony (session 37).

Check 6d ties every `key.register` of a KEK, fingerprint or audit key past version 1
to its ceremony's start, and ignored version 1 (made by `cofre hsm init`). The attacker
holds the HSM PIN and the database: they destroy `cofre-fp-v1` and make a new one under
the same label (what `cofre hsm init` does on a token without that kind, or the PIN
alone), and write its `key.register` audit entry. The vault's key registry is those
entries ("the last record of a label wins"), so the vault takes the new key at once,
with no proposal, approval or start; the bundle VERIFIED. Now a version-1 registration
counts only at the log's first start (`cofre_evidence_verifier.key_registrations`).

Real SoftHSM2 (the session's rotation token), the real exporter, the verifier's CLI.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from audit.log import DetailValue
from hsm.keys import KeyHierarchy, KeyKind, key_label
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.vault_evidence import (
    export_to,
    verifier_cli,
    verify_by_vault_key,
    write_entry,
)
from vault.key_registry import token_identities

OPERATOR = "cofre hsm init"


@pytest.fixture
def vault(tmp_path: Path, rotation_provider: HSMProvider) -> Iterator[VaultServer]:
    if not rotation_provider.has_key(key_label(KeyKind.FINGERPRINT, 1)):
        # The session's rotation token: an earlier test may have rotated version 1 away
        # (in the suite's order it holds later versions only). Made before the vault's
        # first start, which adopts it with the rest.
        KeyHierarchy(rotation_provider).create(KeyKind.FINGERPRINT, 1)
    with running_vault(tmp_path / "vault", rotation_provider) as server:
        yield server


def _replace_version_one(vault: VaultServer, provider: HSMProvider, how: str) -> str:
    """What the operator does: `cofre-fp-v1` destroyed and made again with the HSM PIN,
    registered by an audit entry they write. Returns its label."""
    label = key_label(KeyKind.FINGERPRINT, 1)
    before = vault.runtime.service.keyring.registry.registered(fresh=True)[label]
    provider.destroy_key(label)
    KeyHierarchy(provider).create(KeyKind.FINGERPRINT, 1)
    identity = token_identities(provider.list_keys())[label]
    assert identity is not None
    assert identity != before, "the same key again"
    details: dict[str, DetailValue] = {**identity.as_details(), "how": how}
    write_entry(vault, "key.register", OPERATOR, label, details)
    return label


@pytest.mark.parametrize("how", [OPERATOR, "adopted at first start"])
def test_a_version_one_key_replaced_mid_period_fails_the_bundle(
    vault: VaultServer, rotation_provider: HSMProvider, tmp_path: Path, how: str
) -> None:
    # The vault's first start (its adoption of the token's keys) is in this period too:
    # the bundle holds the log from entry 0, which is where version 1 may be registered.
    since = datetime.now(UTC) - timedelta(hours=1)
    with vault.client("payments") as client:
        assert client.get("/readyz").status_code == 200
    label = _replace_version_one(vault, rotation_provider, how)
    registry = vault.runtime.service.keyring.registry
    # The vault no longer takes it (a label registered as two keys is never used:
    # tests/vault/test_s37_registered_twice.py); the evidence fails it either way.
    assert (
        registry.registered(fresh=True)[label]
        != token_identities(rotation_provider.list_keys())[label]
    )
    bundle = export_to(vault, since, tmp_path / "replaced.tar.gz")
    report = verify_by_vault_key(bundle, vault)
    assert not report.ok, "a version-1 key put into use mid-period was VERIFIED"
    [line] = [p for p in report.problems if f"registers {label}" in p]
    assert "without a key ceremony" in line, line
    pem = tmp_path / "audit.pem"
    pem.write_bytes(vault.runtime.sequencer.signer.public_key_pem())
    result = verifier_cli(bundle, pem)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("FAILED\n")
    assert label in result.stdout


def test_the_first_start_and_a_later_period_still_verify(
    vault: VaultServer, tmp_path: Path
) -> None:
    """The genuine path: the vault's first start adopts version 1 of each kind (the
    bundle from entry 0), and a period after it holds no version-1 registration."""
    with vault.client("payments") as client:
        assert client.get("/readyz").status_code == 200
    whole = export_to(vault, datetime.now(UTC) - timedelta(hours=1), tmp_path / "all.tar.gz")
    report = verify_by_vault_key(whole, vault)
    assert report.ok, report.problems
    [line] = [c for c in report.checks if c.startswith("key registrations:")]
    assert "cofre-fp-v1 (entry" in line, line
    later = export_to(vault, datetime.now(UTC), tmp_path / "later.tar.gz")
    report = verify_by_vault_key(later, vault)
    assert report.ok, report.problems
