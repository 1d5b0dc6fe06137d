"""A writer of the vault's database who holds no HSM PIN restores rows from a backup
(session 38, bak38): the wrapped bytes of a data key a rotation destroyed, and token
rows sealed under it, some shredded by a delete since. The KEK still unwraps the old
wrapped key, so until session 38 every such card opened again (PCI DSS 3.7.5: a retired
key must not be usable; deletion must be effective).

The vault now refuses a data-key version the audit log records retired (the log is
tamper-evident and witnessed: a writer cannot take the record out unnoticed), as
`integrity_error`, audited naming the token. Real SoftHSM2 (and the CloudHSM shim),
SQLite and PostgreSQL, the real vault service.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.backups import backup as _backup
from tests.support.backups import restore_row as _restore_row
from tests.support.pans import card_number
from tests.vault.conftest import (
    ALICE,
    BOB,
    GETNET,
    OFFICERS,
    PAYMENTS,
    TEST_POLICY,
    rotation_of,
)
from vault.ceremony import CeremonyState
from vault.errors import IntegrityError, TokenNotFound
from vault.pan import Pan
from vault.rotation import KeyRotation
from vault.service import TokenizeRequest, VaultService

VICTIM = Pan(card_number("453201", 38001))


def _restore_keys(engine: Engine, keys: list[dict[str, Any]], state: str) -> None:
    """The writer puts the backup's wrapped bytes back into the destroyed versions' rows."""
    with engine.begin() as connection:
        for key in keys:
            connection.execute(
                sa.text(
                    "UPDATE data_keys SET wrapped = :wrapped, state = :state "
                    "WHERE purpose = :purpose AND version = :version AND state = 'destroyed'"
                ),
                {**key, "state": state},
            )


def _rotate_data_keys(rotation: KeyRotation) -> None:
    _rotate(rotation, "data")


def _rotate(rotation: KeyRotation, kind: str) -> None:
    ceremony = rotation.propose(ALICE, kind)
    rotation.approve(BOB, ceremony.id)
    for _ in range(1_000):
        rotation.run_pending()
        if rotation.status(ALICE, ceremony.id).state == CeremonyState.COMPLETED:
            return
    raise AssertionError(f"the {kind} rotation did not finish")


def _last_entry(engine: Engine) -> dict[str, Any]:
    with engine.connect() as connection:
        payload = connection.execute(
            sa.text("SELECT payload FROM audit_entries ORDER BY id DESC LIMIT 1")
        ).scalar_one()
    entry: dict[str, Any] = json.loads(payload)
    return entry


def _node(engine: Engine, provider: HSMProvider) -> VaultService:
    """Another node, started after the restore (nothing of the old key in its memory)."""
    policy = PolicyEngine(parse_policy(TEST_POLICY + OFFICERS, kind="toml").policy)
    service = VaultService(engine, provider, policy)
    # As the rotations here ran: in process, their officers signing nothing, whose data
    # completions count only on a node that takes unsigned ceremonies (session 40).
    rotation_of(service, engine, provider)
    service.initialize()
    return service


def _refused_as_tampered(service: VaultService, engine: Engine, token: str, token_id: str) -> None:
    with pytest.raises(IntegrityError):
        service.detokenize(GETNET, token)
    entry = _last_entry(engine)
    assert (entry["action"], entry["outcome"], entry["actor"]) == (
        "detokenize",
        "failed",
        GETNET.identity,
    )
    assert entry["details"] == {"error": "integrity_error"}
    assert entry["token_id"] == token_id


@pytest.mark.parametrize("state", ["destroyed", "retiring"])
def test_a_destroyed_data_key_restored_with_a_shredded_row_does_not_open(
    rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    rotation_provider: HSMProvider,
    state: str,
) -> None:
    # The backup holds the card under data key v1 and v1's wrapped bytes. Payments
    # deletes the token, a data rotation destroys v1; the writer restores both (the
    # audit log left as it is). The KEK unwraps v1, and the card opened again.
    service, rotation = rig
    token = service.tokenize(PAYMENTS, TokenizeRequest(VICTIM, "pan_bin6_last4")).token
    row, keys = _backup(engine, token)
    assert service.delete(PAYMENTS, token)
    _rotate_data_keys(rotation)
    _restore_keys(engine, [key for key in keys if key["version"] == row["key_version"]], state)
    _restore_row(engine, row)
    _refused_as_tampered(service, engine, token, row["id"])
    fresh = _node(engine, rotation_provider)
    try:
        _refused_as_tampered(fresh, engine, token, row["id"])
    finally:
        fresh.close()


def test_a_live_row_put_back_under_its_destroyed_key_does_not_open(
    rig: tuple[VaultService, KeyRotation], engine: Engine, rotation_provider: HSMProvider
) -> None:
    # Not deleted: the rotation resealed the card under v2. The writer puts the v1 row
    # and v1's wrapped bytes back: the card is the same, but a retired key is in use
    # again (PCI DSS 3.7.5), and a reader of the row learns nothing new only because
    # the card is the same one.
    service, rotation = rig
    token = service.tokenize(PAYMENTS, TokenizeRequest(VICTIM, "pan_bin6_last4")).token
    row, keys = _backup(engine, token)
    _rotate_data_keys(rotation)
    assert service.detokenize(GETNET, token).pan == VICTIM  # under v2 now
    _restore_keys(engine, keys, "retiring")
    _restore_row(engine, row)
    fresh = _node(engine, rotation_provider)
    try:
        _refused_as_tampered(fresh, engine, token, row["id"])
    finally:
        fresh.close()


def test_a_row_under_the_retiring_key_opens_while_its_rotation_runs(
    rig: tuple[VaultService, KeyRotation], engine: Engine
) -> None:
    # The legitimate flow the refusal must leave alone: until the rotation completes,
    # rows not yet resealed are read under the old version.
    service, rotation = rig
    tokens = [
        service.tokenize(PAYMENTS, TokenizeRequest(Pan(card_number("453201", n)), "card_random"))
        for n in range(38100, 38103)
    ]
    ceremony = rotation.propose(ALICE, "data")
    rotation.approve(BOB, ceremony.id)
    rotation.run_pending(batch=1)  # one row moved, two still under v1
    with engine.connect() as connection:
        under_old = connection.execute(
            sa.text("SELECT count(*) FROM tokens WHERE key_version = 1")
        ).scalar_one()
    assert under_old == 2
    for n, record in zip(range(38100, 38103), tokens, strict=True):
        assert service.detokenize(GETNET, record.token).pan == Pan(card_number("453201", n))


@pytest.mark.xfail(
    strict=True,
    reason="bound (session 38): a shredded token's row written back while its data key is "
    "live opens again until a data rotation retires that key (the evidence bundle of the "
    "period fails check 6e, tests/compliance/test_ev38_deleted_token_revealed.py); "
    "docs/threat-model.md, 'A deleted token restored from a backup'",
)
def test_a_shredded_row_written_back_under_the_live_key_does_not_open(
    service: VaultService, engine: Engine
) -> None:
    token = service.tokenize(PAYMENTS, TokenizeRequest(VICTIM, "pan_bin6_last4")).token
    row, _ = _backup(engine, token)
    assert service.delete(PAYMENTS, token)
    with pytest.raises(TokenNotFound):
        service.detokenize(GETNET, token)
    _restore_row(engine, row)
    with pytest.raises((TokenNotFound, IntegrityError)):
        service.detokenize(GETNET, token)


def test_a_kek_rotation_does_not_carry_a_restored_destroyed_key_under_the_new_kek(
    rig: tuple[VaultService, KeyRotation], engine: Engine
) -> None:
    # A KEK rotation re-wraps every data key not marked destroyed: the restored bytes,
    # marked retiring, came out under the new KEK and outlived the old KEK's
    # destruction, the one step that was to end what backups can give back.
    service, rotation = rig
    token = service.tokenize(PAYMENTS, TokenizeRequest(VICTIM, "pan_bin6_last4")).token
    row, keys = _backup(engine, token)
    _rotate_data_keys(rotation)
    _restore_keys(engine, [key for key in keys if key["version"] == row["key_version"]], "retiring")
    _rotate(rotation, "kek")
    with engine.connect() as connection:
        left = connection.execute(
            sa.text("SELECT state, wrapped, kek_label FROM data_keys WHERE version = :v"),
            {"v": row["key_version"]},
        ).all()
    assert {(state, bytes(wrapped)) for state, wrapped, _ in left} == {("destroyed", b"")}
    assert service.detokenize(GETNET, token).pan == VICTIM  # the live row, under v2
