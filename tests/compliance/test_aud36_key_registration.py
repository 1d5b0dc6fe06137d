"""A key put into use by the operator alone, with no key ceremony (audit 36).

The attacker holds the HSM PIN and the database: they make the next version of a key on
the token (`C_GenerateKey` under `cofre-kek-vN`) and write its `key.register` audit
entry themselves. The vault's key registry is those entries, so from then on the vault
takes the new key as current (`vault.key_registry`), with no proposal, no approval and
no `key.rotation.start`: a rotation by no officer at all (PCI DSS 3.6.1.2, 3.7.6,
3.7.7). Check 6c counted officers only for rotations whose start is in the log, so the
bundle was VERIFIED and its report said nothing. The verifier now ties every
registration of a ceremony-governed key (kek, fingerprint, audit) in the period to
the start of the ceremony that made it (`cofre_evidence_verifier.key_registrations`).

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
    whole_log,
    write_entry,
)
from vault.key_registry import token_identities

ALICE = "spiffe://cofre/officer-alice"


@pytest.fixture
def vault(tmp_path: Path, rotation_provider: HSMProvider) -> Iterator[VaultServer]:
    with running_vault(tmp_path / "vault", rotation_provider) as server:
        yield server


def _plant_next_kek(vault: VaultServer, provider: HSMProvider, how: str) -> str:
    """What the operator does: the next KEK made with the HSM PIN, registered by an
    audit entry they write. Returns its label."""
    registry = vault.runtime.service.keyring.registry
    label = key_label(KeyKind.KEK, registry.versions(KeyKind.KEK)[-1] + 1)
    KeyHierarchy(provider).create(KeyKind.KEK, int(label.rsplit("v", 1)[1]))
    identity = token_identities(provider.list_keys())[label]
    assert identity is not None
    details: dict[str, DetailValue] = {**identity.as_details(), "how": how}
    write_entry(vault, "key.register", ALICE, label, details)
    return label


@pytest.mark.parametrize(
    "how",
    [
        "adopted at first start",  # as the vault writes an adoption
        "created by key ceremony 5b8e0f6a-3c2d-4e1f-9a7b-2c3d4e5f6a7b",  # a ceremony never run
    ],
)
def test_a_key_registered_without_a_ceremony_fails_the_bundle(
    vault: VaultServer, rotation_provider: HSMProvider, tmp_path: Path, how: str
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    label = _plant_next_kek(vault, rotation_provider, how)
    try:
        # Since session 40 the vault refuses it (unsigned, version 2 or later), and the
        # evidence still names the record (tests/vault/test_sign40_planted_rotation.py).
        registry = vault.runtime.service.keyring.registry
        assert registry.current_label(KeyKind.KEK) != label
        assert label in registry.refused()
        bundle = export_to(vault, since, tmp_path / "planted.tar.gz")
        report = verify_by_vault_key(bundle, vault)
        assert not report.ok, "a key no ceremony made was VERIFIED"
        assert any(f"registers {label}" in p for p in report.problems), report.problems
        pem = tmp_path / "audit.pem"
        pem.write_bytes(vault.runtime.sequencer.signer.public_key_pem())
        result = verifier_cli(bundle, pem)
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stdout.startswith("FAILED\n")
        assert label in result.stdout
    finally:
        rotation_provider.destroy_key(label)


def test_a_kek_rotated_under_dual_control_still_verifies(
    vault: VaultServer, tmp_path: Path
) -> None:
    """The genuine path: Alice proposes, Bob approves, the vault makes and registers the
    new KEK in the start's transaction; the registration is tied to that ceremony."""
    since = whole_log()
    approved = vault.approved_rotation("kek")
    report = verify_by_vault_key(export_to(vault, since, tmp_path / "genuine.tar.gz"), vault)
    assert report.ok, report.problems
    [line] = [c for c in report.checks if c.startswith("key registrations:")]
    # The session's rotation token may hold other tests' keys, which this vault adopted
    # at its first start (in this period too): name the ceremony's own key, not a count.
    assert f"cofre-kek-v{approved['new_version']} (entry" in line, line
    assert "cofre-kek-v" in line
