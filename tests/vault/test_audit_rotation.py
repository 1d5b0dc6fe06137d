"""Rotation of the audit signing key under dual control (issue 23 item 5), on SQLite and
PostgreSQL, against the session's rotation token: the handover checkpoint signed by both
keys, every node's signer following it, and the attacks (self-approval, a key made
with the PIN and no ceremony, a forged handover, a node signing with a stale key)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, insert

from audit.errors import AuditVerificationFailed
from audit.handover import HandoverRow, handover_rows, hold_sequencer_lock, verified_label
from audit.heads import SignedTreeHead, checkpoint_text, log_verifier_key
from audit.note import handover_note, handover_text, parse_checkpoint, parse_handover
from audit.schema import audit_handovers, audit_heads
from audit.sequencer import DEFAULT_BATCH, Sequencer, SequencerThread
from audit.store import AuditStore
from hsm.keys import KeyKind, key_label
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.pans import card_number
from tests.vault.conftest import PAYMENTS, TEST_POLICY
from vault.ceremony import CeremonyState
from vault.errors import CeremonyError
from vault.pan import Pan
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
    return Pan(card_number("4", i))


@pytest.fixture
def rig(
    engine: Engine, rotation_provider: HSMProvider
) -> Iterator[tuple[VaultService, KeyRotation, HSMTreeHeadSigner]]:
    policy = PolicyEngine(parse_policy(TEST_POLICY + OFFICERS, kind="toml").policy)
    service = VaultService(engine, rotation_provider, policy)
    service.initialize()
    rotation = KeyRotation(
        engine,
        rotation_provider,
        service.keyring,
        lambda: service.policy,
        unsigned_officers_count=True,
    )
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
    # The vault's own signer refuses to sign at all (no fallback to the old key either).
    with pytest.raises(AuditVerificationFailed, match="not signed by the old key"):
        signer.sign(b"x")


class _OneTick(Sequencer):
    """A sequencer that stops its thread after one tick (no waiting on the clock)."""

    thread: SequencerThread | None = None

    def run_once(self, *, batch: int = DEFAULT_BATCH, force_sign: bool = False) -> int:
        try:
            return super().run_once(batch=batch, force_sign=True)
        finally:
            assert self.thread is not None
            self.thread._stop.set()


def _plant(engine: Engine, tree_size: int, label: str, note: str) -> None:
    with engine.begin() as connection:
        hold_sequencer_lock(connection)
        connection.execute(
            insert(audit_handovers).values(
                tree_size=tree_size, key_label=label, note=note, recorded_at=datetime.now(UTC)
            )
        )


def _rogue_note(head: SignedTreeHead) -> str:
    """A well-formed handover signed by both of its keys, neither of them the vault's."""
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(2)]
    pems = [
        k.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        for k in keys
    ]
    old, new = log_verifier_key(head, pems[0]), log_verifier_key(head, pems[1])
    text = handover_text(parse_checkpoint(head.checkpoint), old, new)
    signatures = [k.sign(text.encode(), ec.ECDSA(hashes.SHA256())) for k in keys]
    return handover_note(text, old, signatures[0], new, signatures[1])


@pytest.mark.parametrize("planted", ["retired_label", "unregistered_label", "rogue_keys"])
def test_a_planted_handover_row_never_picks_the_signing_key(
    rig: tuple[VaultService, KeyRotation, HSMTreeHeadSigner], engine: Engine, planted: str
) -> None:
    """Security review (MEDIUM): a database writer inserting a row with the biggest
    tree_size chose the key every node signed with (a retired one: witnesses refuse
    everything; an unregistered one: nothing signed; a planted one: the attacker's)."""
    service, rotation, signer = rig
    Sequencer(engine, signer).drain()
    old_label = signer.key_id
    new_label = _rotate(rotation)
    assert signer.key_id == new_label
    head = AuditStore(engine).latest_head()
    assert head is not None
    if planted == "retired_label":
        _plant(engine, 10**12, old_label, "x")
    elif planted == "unregistered_label":
        _plant(engine, 10**12, "cofre-audit-v999", "x")
    else:
        _plant(engine, 10**12, old_label, _rogue_note(head))
    for node in (
        signer,
        HSMTreeHeadSigner(signer._provider, registry=service.keyring.registry, engine=engine),
    ):
        with pytest.raises(AuditVerificationFailed, match="stored key handovers do not verify"):
            node.sign(b"x")
    service.tokenize(PAYMENTS, TokenizeRequest(_pan(7), "pan_bin6_last4"))
    with pytest.raises(AuditVerificationFailed):
        Sequencer(engine, signer).drain()
    assert AuditStore(engine).latest_head() == head  # nothing signed with the planted key
    # The serving node's sequencer thread is unready and says why.
    thread = SequencerThread(_OneTick(engine, signer), interval=0.0)
    _OneTick.thread = thread
    thread._tick_until_stopped()  # one tick, in this thread
    assert not thread.alive()
    assert "stored key handovers do not verify" in (thread.last_error or "")


def test_a_genuine_note_under_another_label_signs_nothing(
    rig: tuple[VaultService, KeyRotation, HSMTreeHeadSigner], engine: Engine
) -> None:
    """The newest row's label must hold the key its (genuine) note hands over to."""
    _, rotation, signer = rig
    Sequencer(engine, signer).drain()
    old_label = signer.key_id
    _rotate(rotation)
    with engine.connect() as connection:
        (row,) = handover_rows(connection)
    provider = signer._provider
    anchors = [provider.public_key_pem(old_label)]
    assert verified_label((row,), anchors, provider.public_key_pem) == row.key_label
    relabelled = HandoverRow(row.tree_size, old_label, row.note)
    with pytest.raises(AuditVerificationFailed, match="not the key its note hands over to"):
        verified_label((relabelled,), anchors, provider.public_key_pem)
    moved = HandoverRow(10**12, row.key_label, row.note)
    with pytest.raises(AuditVerificationFailed, match="holds a note at size"):
        verified_label((moved,), anchors, provider.public_key_pem)
    # The same genuine note again under a bigger size and the old label: refused.
    _plant(engine, 10**12, old_label, row.note)
    with pytest.raises(AuditVerificationFailed, match="two key handovers"):
        signer.sign(b"x")


@pytest.mark.parametrize("altered", ["root", "signature"])
def test_rotation_refuses_to_sign_an_unverified_newest_head(
    rig: tuple[VaultService, KeyRotation, HSMTreeHeadSigner],
    engine: Engine,
    rotation_provider: HSMProvider,
    altered: str,
) -> None:
    """Security review (MEDIUM): the rotation signed whatever ``audit_heads`` held with
    both HSM keys (a signing oracle for a database writer)."""
    service, rotation, signer = rig
    Sequencer(engine, signer).drain()
    service.tokenize(PAYMENTS, TokenizeRequest(_pan(8), "pan_bin6_last4"))
    # Integrated, not signed: the planted head is the newest, at the tree's size.
    Sequencer(engine, signer, sign_every_entries=10**6, sign_every_seconds=10**6).run_once()
    size = AuditStore(engine).size()
    true_root = AuditStore(engine).root_at(size)
    root = bytes(32) if altered == "root" else true_root
    text = checkpoint_text("cofre", size, root, 1)
    signature = signer.sign(text.encode())
    if altered == "signature":
        signature = signer.sign(b"something else")
    with engine.begin() as connection:
        connection.execute(
            insert(audit_heads).values(
                tree_size=size,
                root_hash=root,
                timestamp_ms=1,
                key_id=signer.key_id,
                checkpoint=text,
                signature=signature,
            )
        )
    versions = service.keyring.registry.versions(KeyKind.AUDIT)
    ceremony = rotation.propose(ALICE, "audit")
    with pytest.raises(CeremonyError, match="newest signed tree head"):
        rotation.approve(BOB, ceremony.id)
    assert AuditStore(engine).handover_notes() == []
    assert not rotation_provider.has_key(key_label(KeyKind.AUDIT, versions[-1] + 1))


def test_heads_do_not_list_the_token_until_a_rotation(
    rig: tuple[VaultService, KeyRotation, HSMTreeHeadSigner],
    engine: Engine,
    rotation_provider: HSMProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sequencer signs inside its write transaction, and listing the token's keys is
    about 100 HSM round trips: on a networked HSM every head would hold every commit of
    the node that long (issue 19). The signer resolves its key again only when the
    stored handovers change, and then follows the rotation at once."""
    service, rotation, signer = rig
    Sequencer(engine, signer).drain()
    listings: list[int] = []
    real = rotation_provider.list_keys

    def counted() -> list[Any]:
        listings.append(1)
        return real()

    for i in range(3):
        # (The tokenize path keeps its own listing, cached for a second: not counted.)
        service.tokenize(PAYMENTS, TokenizeRequest(_pan(700 + i), "pan_bin6_last4"))
        with monkeypatch.context() as patch:
            patch.setattr(rotation_provider, "list_keys", counted)
            assert Sequencer(engine, signer).drain() > 0
    assert listings == []
    new = _rotate(rotation)
    assert signer.key_id == new
    service.tokenize(PAYMENTS, TokenizeRequest(_pan(710), "pan_bin6_last4"))
    Sequencer(engine, signer).drain()
    with engine.connect() as connection:
        newest = connection.execute(
            sa.select(audit_heads.c.key_id).order_by(audit_heads.c.tree_size.desc()).limit(1)
        ).scalar_one()
    assert newest == new
