"""Session 40: a rotation's own key registration, and a data rotation's completion, are
the officers' signed records (the attacker: the operator who holds the HSM PIN and
writes the database, not an officer).

Until now a rotation's `key.register` of the version it made (a KEK, fingerprint or
audit key of version 2 or later) was unsigned, and the registry took unsigned records
for a label with no signed one. The PIN holder made ``cofre-kek-v<N+1>`` on the token,
wrote its `key.register` by hand ("created by key ceremony <one that ran>"), and the
vault wrapped every new data key under it at once: only an evidence bundle's check 6d
named it, after the fact. Now the rotation's start puts the officers' signed proposal
and approvals on the registration (`vault._signed_registration.ceremony_document`) and
the registry takes a version 2 or later only from such a record, of a ceremony of that
key's kind: an unsigned one is refused, the version before it stays in use and
readiness names it. A copy of a genuine rotation's signatures onto the planted label
makes both labels unusable (one ceremony makes one version): fail closed, never the
planted key.

A data rotation's completion counts only when it names the version the first start of
its ceremony proven by the same signed requests rotated from (review rev39's forged
completion, tests/vault/test_rev39_retired_records.py, and a copy of a genuine start).

Real SoftHSM2, SQLite and PostgreSQL, officers who sign with their tokens' keys.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from audit.log import AuditEvent, AuditLog, Outcome
from hsm.keys import KeyHierarchy, KeyKind, key_label
from hsm.provider import HSMProvider
from tests.support.audit_trail import append_registration
from tests.support.officers import SigningOfficer, signed_approval, signed_proposal
from tests.support.pans import card_number
from tests.support.softhsm import settled_ready
from tests.vault.conftest import ALICE, BOB, GETNET, PAYMENTS, reregister
from vault.ceremony import Ceremony, CeremonyState
from vault.errors import KeyNotRegistered
from vault.key_registry import token_identities
from vault.pan import Pan
from vault.rotation import KeyRotation
from vault.service import TokenizeRequest, VaultService

_ENTRIES = sa.text("SELECT payload FROM audit_entries WHERE payload LIKE :p ORDER BY id")
CARD = Pan(card_number("453201", 40040))
_ACTIVE = sa.text("SELECT kek_label FROM data_keys WHERE purpose = 'pan_gcm' AND state = 'active'")


def _rotate(rotation: KeyRotation, officers: dict[str, SigningOfficer], kind: str) -> Ceremony:
    """A `kind` rotation Alice proposes and Bob approves, each signing with their token,
    carried out to its end (bounded: fails only on a hang)."""
    proposal = signed_proposal(officers[ALICE], kind)
    view = rotation.propose(ALICE, kind, keyid=officers[ALICE].keyid, proof=proposal)
    approval = signed_approval(officers[BOB], view.id)
    view = rotation.approve(BOB, view.id, keyid=officers[BOB].keyid, proof=approval)
    for _ in range(1_000):
        if rotation.status(ALICE, view.id).state == CeremonyState.COMPLETED:
            break
        rotation.run_pending()
    return rotation.status(ALICE, view.id)


def _entries(engine: Engine, action: str) -> list[dict[str, object]]:
    with engine.connect() as connection:
        payloads = connection.execute(_ENTRIES, {"p": f'{{"action":"{action}",%'}).scalars()
        return [json.loads(p) for p in payloads]


def _plant_next_kek(service: VaultService, provider: HSMProvider) -> str:
    """The PIN holder's next KEK on the token (sensitive, never extractable, as ours)."""
    version = service.keyring.registry.versions(KeyKind.KEK)[-1] + 1
    KeyHierarchy(provider).create(KeyKind.KEK, version)
    return key_label(KeyKind.KEK, version)


def _active_kek(engine: Engine) -> str:
    with engine.connect() as connection:
        return str(connection.execute(_ACTIVE).scalar_one())


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_planted_next_kek_with_a_hand_written_registration_wraps_nothing(
    signing_rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    rotation_provider: HSMProvider,
    signing_officers: dict[str, SigningOfficer],
) -> None:
    service, rotation = signing_rig
    registry = service.keyring.registry
    before = registry.versions(KeyKind.KEK)[-1]  # the session's rotation token rotates on
    ran = _rotate(rotation, signing_officers, "kek")  # a genuine rotation: vN -> vN+1
    genuine = registry.current_label(KeyKind.KEK)
    assert genuine == key_label(KeyKind.KEK, before + 1)
    planted = _plant_next_kek(service, rotation_provider)
    try:
        identity = token_identities(rotation_provider.list_keys())[planted]
        assert identity is not None
        how = f"created by key ceremony {ran.id}"  # a ceremony that ran
        append_registration(engine, planted, {**identity.as_details(), "how": how})
        registry.registered(fresh=True)  # every node reads the log anew each second
        assert registry.current_label(KeyKind.KEK) == genuine
        # A data rotation now wraps its new data keys under the KEK the officers made.
        _rotate(rotation, signing_officers, "data")
        assert _active_kek(engine) == genuine
        with pytest.raises(KeyNotRegistered, match="not proven by the signatures") as said:
            service.check_ready()
        assert planted in str(said.value)
    finally:
        rotation_provider.destroy_key(planted)  # the session's token: leave what it had


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_genuine_rotations_signatures_copied_onto_a_planted_kek_fail_closed(
    signing_rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    rotation_provider: HSMProvider,
    signing_officers: dict[str, SigningOfficer],
) -> None:
    """The writer copies the genuine v2 registration's ceremony and document (the
    officers' signatures, public in the log) onto a record of the planted v3: one
    ceremony makes one version, so neither label is used, and the vault refuses to
    tokenize rather than seal under the planted key or fall back to v1."""
    service, rotation = signing_rig
    _rotate(rotation, signing_officers, "kek")
    registry = service.keyring.registry
    genuine = registry.current_label(KeyKind.KEK)
    [record] = [e for e in _entries(engine, "key.register") if e["key_id"] == genuine]
    details = record["details"]
    assert isinstance(details, dict)
    assert details.get("ceremony")
    assert record.get("document")
    planted = _plant_next_kek(service, rotation_provider)
    try:
        identity = token_identities(rotation_provider.list_keys())[planted]
        assert identity is not None
        copied = {**details, **identity.as_details()}
        append_registration(engine, planted, copied, str(record["document"]))
        registry.registered(fresh=True)
        pan = Pan(card_number("411111", 4040))
        with pytest.raises(KeyNotRegistered):
            sealed = service.tokenize(PAYMENTS, TokenizeRequest(pan, "pan_bin6_last4"))
            pytest.fail(f"tokenized as {sealed.token} under {registry.current_label(KeyKind.KEK)}")
    finally:
        rotation_provider.destroy_key(planted)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_forged_start_and_completion_of_a_genuine_data_rotation_retire_nothing(
    signing_rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    rotation_provider: HSMProvider,
    signing_officers: dict[str, SigningOfficer],
) -> None:
    """The writer copies a genuine data rotation's signed start onto a start of the same
    ceremony naming a high version, then completes it: the first proven start of that
    ceremony names the version it really rotated from, so the forged completion is
    passed over and the live data key still opens."""
    (service, rotation), provider = signing_rig, rotation_provider
    ran = _rotate(rotation, signing_officers, "data")  # v1 retired, v2 live
    token = service.tokenize(PAYMENTS, TokenizeRequest(CARD, "pan_bin6_last4")).token
    [start] = [e for e in _entries(engine, "key.rotation.start") if e["key_id"] == ran.id]
    details = start["details"]
    assert isinstance(details, dict)
    assert start.get("document")
    high = 1_000_000
    with engine.begin() as connection:
        log = AuditLog()
        log.append(
            connection,
            AuditEvent(
                action="key.rotation.start",
                outcome=Outcome.SUCCESS,
                actor=BOB,
                key_id=ran.id,
                details={**details, "old_version": high, "new_version": high + 1},
                document=str(start["document"]),
            ),
        )
        log.append(
            connection,
            AuditEvent(
                action="key.rotation.complete",
                outcome=Outcome.SUCCESS,
                actor="cofre rotation",
                key_id=ran.id,
                details={"kind": "data", "retired_version": high},
            ),
        )
    rotation.run_pending()  # the worker's pass reads the completions
    fresh = VaultService(engine, provider, service.policy)  # nothing unwrapped in memory
    fresh.initialize()
    try:
        assert fresh.detokenize(GETNET, token).pan == CARD
    finally:
        fresh.close()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_the_upgrade_step_registers_a_version_an_earlier_rotation_made(
    signing_rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    rotation_provider: HSMProvider,
    signing_officers: dict[str, SigningOfficer],
) -> None:
    """A vault upgraded onto a log whose rotation (before session 40) registered its
    new KEK unsigned: the version is refused until the officers run a ``register``
    ceremony naming it (docs/operations.md, "Upgrade notes: session 40"), which a label
    only unsigned records name may take; then it is the KEK again."""
    service, rotation = signing_rig
    registry = service.keyring.registry
    made = _plant_next_kek(service, rotation_provider)  # as a rotation before 40 made it
    identity = token_identities(rotation_provider.list_keys())[made]
    assert identity is not None
    how = "created by key ceremony 5b8e0f6a-3c2d-4e1f-9a7b-2c3d4e5f6a7b"
    append_registration(engine, made, {**identity.as_details(), "how": how})
    assert made in registry.refused()
    assert registry.current_label(KeyKind.KEK) != made
    done = reregister(rotation, signing_officers, dict(identity.as_details()))
    assert done.state == CeremonyState.COMPLETED
    assert registry.current_label(KeyKind.KEK) == made
    assert made not in registry.refused()
    settled_ready(service.check_ready)
