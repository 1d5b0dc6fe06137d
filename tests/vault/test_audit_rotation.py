"""Rotation of the audit signing key under dual control (issue 23 item 5), on SQLite and
PostgreSQL, against the session's rotation token: the handover checkpoint signed by both
keys, every node's signer following it, and the attacks (self-approval, a key made
with the PIN and no ceremony, a forged handover, a node signing with a stale key)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, insert

from audit.errors import AuditVerificationFailed
from audit.handover import hold_sequencer_lock
from audit.heads import log_verifier_key
from audit.note import handover_note, handover_text, parse_checkpoint, parse_handover
from audit.schema import audit_handovers
from audit.sequencer import Sequencer
from audit.store import AuditStore
from hsm.keys import KeyKind, key_label
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.vault.conftest import PAYMENTS, TEST_POLICY
from vault.ceremony import CeremonyState
from vault.errors import CeremonyError
from vault.pan import Pan, luhn_check_digit
from vault.rotation import KeyRotation
from vault.service import TokenizeRequest, VaultService
from vault.signing import HSMTreeHeadSigner

OFFICERS = """
[identities."spiffe://cofre/officer-bob"]
role = "security_officer"
operations = ["key_admin"]
"""
ALICE, BOB = "spiffe://cofre/officer-alice", "spiffe://cofre/officer-bob"


def _pan(i: int) -> Pan:
    body = f"4{i:014d}"
    return Pan(body + luhn_check_digit(body))


@pytest.fixture
def rig(
    engine: Engine, rotation_provider: HSMProvider
) -> Iterator[tuple[VaultService, KeyRotation, HSMTreeHeadSigner]]:
    policy = PolicyEngine(parse_policy(TEST_POLICY + OFFICERS, kind="toml").policy)
    service = VaultService(engine, rotation_provider, policy)
    service.initialize()
    rotation = KeyRotation(engine, rotation_provider, service.keyring, lambda: service.policy)
    # What `cofre serve` wires: the registry and the database (the handovers).
    signer = HSMTreeHeadSigner(rotation_provider, registry=service.keyring.registry, engine=engine)
    yield service, rotation, signer
    service.close()


def _actions(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT payload FROM audit_entries ORDER BY id"))
        return [json.loads(p) for p in rows.scalars()]


def _rotate(rotation: KeyRotation) -> str:
    ceremony = rotation.propose(ALICE, "audit")
    done = rotation.approve(BOB, ceremony.id)
    assert done.state == CeremonyState.COMPLETED
    assert done.new_version == done.old_version + 1  # type: ignore[operator]
    return key_label(KeyKind.AUDIT, done.new_version)  # type: ignore[arg-type]


def test_audit_key_rotation_hands_over_and_every_verifier_follows(
    rig: tuple[VaultService, KeyRotation, HSMTreeHeadSigner], engine: Engine
) -> None:
    service, rotation, signer = rig
    service.tokenize(PAYMENTS, TokenizeRequest(_pan(1), "pan_bin6_last4"))
    Sequencer(engine, signer).drain()
    old_label, old_pem = signer.key_id, signer.public_key_pem()
    other_node = HSMTreeHeadSigner(
        signer._provider, registry=service.keyring.registry, engine=engine
    )
    assert other_node.key_id == old_label  # resolved before the rotation

    # Self-approval is denied, and the denial is in the log.
    ceremony = rotation.propose(ALICE, "audit")
    with pytest.raises(CeremonyError, match="proposer cannot approve"):
        rotation.approve(ALICE, ceremony.id)
    assert any(
        e["action"] == "key.rotation.approve" and e["outcome"] == "denied" for e in _actions(engine)
    )
    rotation.cancel(ALICE, ceremony.id)

    new_label = _rotate(rotation)
    # Both nodes' signers follow the handover at once (read from the database).
    assert signer.key_id == other_node.key_id == new_label != old_label
    new_pem = signer.public_key_pem()
    assert new_pem != old_pem
    store = AuditStore(engine)
    notes = store.handover_notes()
    assert len(notes) == 1
    handover = parse_handover(notes[0])
    assert handover.size == store.latest_head().tree_size  # type: ignore[union-attr]
    assert handover.old == log_verifier_key(store.latest_head(), old_pem)  # type: ignore[arg-type]
    actions = _actions(engine)
    created = [e for e in actions if e["action"] == "key.register"]
    assert created[-1]["key_id"] == new_label
    assert any(e["action"] == "audit.key.handover" for e in actions)

    # Later heads are signed by the new key; pinned at either key, the log verifies.
    service.tokenize(PAYMENTS, TokenizeRequest(_pan(2), "pan_bin6_last4"))
    Sequencer(engine, other_node).drain()
    latest = store.latest_head()
    assert latest is not None
    assert latest.tree_size > handover.size
    assert latest.key_id == new_label
    for pinned in (old_pem, new_pem):
        report = store.verify(pinned)
        assert report.heads_checked >= 2

    # A node that kept signing with the old key (a stale cache): no verifier accepts it.
    service.tokenize(PAYMENTS, TokenizeRequest(_pan(3), "pan_bin6_last4"))
    Sequencer(engine, HSMTreeHeadSigner(signer._provider, old_label)).drain()
    with pytest.raises(AuditVerificationFailed, match="introduced by the handover at size"):
        store.verify(old_pem)


def test_a_key_made_with_the_pin_and_no_ceremony_never_signs(
    rig: tuple[VaultService, KeyRotation, HSMTreeHeadSigner],
    engine: Engine,
    rotation_provider: HSMProvider,
) -> None:
    service, _, signer = rig
    Sequencer(engine, signer).drain()
    current, pem = signer.key_id, signer.public_key_pem()
    versions = service.keyring.registry.versions(KeyKind.AUDIT)
    planted = key_label(KeyKind.AUDIT, versions[-1] + 1)
    rotation_provider.generate_signing_key(planted)
    try:
        assert signer.key_id == current  # not registered: never used
        assert planted in service.keyring.registry.unregistered()
        # The operator signs heads with it anyway: the verifiers refuse them.
        service.tokenize(PAYMENTS, TokenizeRequest(_pan(4), "pan_bin6_last4"))
        Sequencer(engine, HSMTreeHeadSigner(rotation_provider, planted)).drain()
        with pytest.raises(AuditVerificationFailed, match="signed by a key no valid handover"):
            AuditStore(engine).verify(pem)
    finally:
        rotation_provider.destroy_key(planted)


def test_a_forged_handover_signed_only_by_the_new_key_is_refused(
    rig: tuple[VaultService, KeyRotation, HSMTreeHeadSigner], engine: Engine
) -> None:
    _, _, signer = rig
    Sequencer(engine, signer).drain()
    pem = signer.public_key_pem()
    store = AuditStore(engine)
    head = store.latest_head()
    assert head is not None
    rogue = ec.generate_private_key(ec.SECP256R1())
    rogue_pem = rogue.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    old, new = log_verifier_key(head, pem), log_verifier_key(head, rogue_pem)
    text = handover_text(parse_checkpoint(head.checkpoint), old, new)
    signature = rogue.sign(text.encode(), ec.ECDSA(hashes.SHA256()))
    forged = handover_note(text, old, signature, new, signature)
    with engine.begin() as connection:
        hold_sequencer_lock(connection)
        connection.execute(
            insert(audit_handovers).values(
                tree_size=head.tree_size,
                key_label="cofre-audit-v99",
                note=forged,
                recorded_at=datetime.now(UTC),
            )
        )
    with pytest.raises(AuditVerificationFailed, match="not signed by the old key"):
        store.verify(pem)
    # The vault's own signer refuses to sign with the unregistered key it names.
    with pytest.raises(Exception, match="not in the key registry"):
        signer.sign(b"x")
