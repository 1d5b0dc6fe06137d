"""A token row that fails authentication in the middle of a rotation (rot38).

A writer of the database without the HSM PIN (or plain corruption) flips one byte of
one row's ciphertext. The data-key rotation's re-encryption and the fingerprint
rotation's re-fingerprint opened every row of a batch with `open_pan`, whose
`InvalidTag` escaped: each pass rolled back at that row, the other rows of the batch
never moved, and the rotation could never end (PCI DSS 3.6.1/3.7.4: a cryptoperiod
that cannot end), with a traceback for the operator.

Now the row is skipped within its batch and audited once with its token id, the
others move, the rotation refuses to complete (its old key kept: the card is never
destroyed on a detection) and its status names the token; restored from a backup (or
deleted under dual control) the row lets it finish. On SQLite and PostgreSQL, with
SoftHSM2 (and the CloudHSM shim)."""

from __future__ import annotations

import json
import time

import sqlalchemy as sa
from sqlalchemy import Engine

from tests.support.pans import card_number
from tests.vault.conftest import ALICE, CAROL, GETNET, PAYMENTS
from vault.ceremony import CeremonyState
from vault.pan import Pan
from vault.rotation import KeyRotation
from vault.rotation_worker import RotationWorker
from vault.service import TokenizeRequest, VaultService

CARDS = [Pan(card_number("453201", 38100 + i)) for i in range(5)]
_UNREADABLE = "key.rotation.row_unreadable"


def _stored(service: VaultService) -> list[str]:
    return [
        service.tokenize(PAYMENTS, TokenizeRequest(card, "pan_bin6_last4")).token for card in CARDS
    ]


def _row(engine: Engine, token: str) -> sa.Row[tuple[str, bytes, int, int]]:
    with engine.connect() as connection:
        return connection.execute(
            sa.text("SELECT id, ciphertext, key_version, fp_version FROM tokens WHERE token = :t"),
            {"t": token},
        ).one()


def _flip(engine: Engine, token_id: str, ciphertext: bytes) -> None:
    """The writer's edit: one byte of one row's ciphertext."""
    flipped = bytes([ciphertext[0] ^ 0x01]) + ciphertext[1:]
    _put(engine, token_id, flipped)


def _put(engine: Engine, token_id: str, ciphertext: bytes) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE tokens SET ciphertext = :c WHERE id = :i"),
            {"c": ciphertext, "i": token_id},
        )


def _drive(rotation: KeyRotation, ceremony_id: str, passes: int = 12) -> str:
    for _ in range(passes):
        rotation.run_pending()
        state = rotation.status(ALICE, ceremony_id).state
        if state == CeremonyState.COMPLETED:
            break
    return str(rotation.status(ALICE, ceremony_id).state)


def _unreadable_entries(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as connection:
        payloads = connection.execute(
            sa.text("SELECT payload FROM audit_entries WHERE payload LIKE :p ORDER BY id"),
            {"p": f'%"{_UNREADABLE}"%'},
        ).scalars()
        return [json.loads(p) for p in payloads]


def _rotate_past_a_flipped_row(
    rig: tuple[VaultService, KeyRotation], engine: Engine, kind: str
) -> None:
    service, rotation = rig
    tokens = _stored(service)
    bad = _row(engine, tokens[2])
    _flip(engine, bad.id, bytes(bad.ciphertext))
    ceremony = rotation.propose(ALICE, kind)
    rotation.approve(CAROL, ceremony.id)
    # Batches of two: the bad row is in the middle of one, rows follow it.
    for _ in range(6):
        rotation.run_pending(batch=2)
    status = rotation.status(ALICE, ceremony.id)
    assert status.state == CeremonyState.RUNNING, "completed over an unreadable row"
    assert status.stuck_tokens == [bad.id]
    column = 2 if kind == "data" else 3
    moved = {_row(engine, t)[column] for t in tokens if t != tokens[2]}
    assert moved == {status.new_version}, "the rows after the bad one did not move"
    assert _row(engine, tokens[2])[column] == status.old_version, "the bad row was moved"
    entries = _unreadable_entries(engine)
    assert len(entries) == 1, "audited once per pass instead of once per row"
    assert bad.id in json.dumps(entries[0])
    assert "integrity_error" in json.dumps(entries[0])
    held = rotation.held_back()  # what the rotation worker reports to readiness
    assert held is not None
    assert held.code == "integrity_error"
    assert bad.id in str(held)
    # The runbook: the row restored from a backup, and the rotation ends.
    _put(engine, bad.id, bytes(bad.ciphertext))
    assert _drive(rotation, ceremony.id, passes=40) != CeremonyState.RUNNING
    assert rotation.status(ALICE, ceremony.id).stuck_tokens == []
    assert len(_unreadable_entries(engine)) == 1
    assert rotation.held_back() is None
    assert service.detokenize(GETNET, tokens[2]).pan == CARDS[2]


def test_a_data_rotation_skips_a_flipped_row_names_it_and_ends_once_restored(
    rig: tuple[VaultService, KeyRotation], engine: Engine
) -> None:
    _rotate_past_a_flipped_row(rig, engine, "data")


def test_a_fingerprint_rotation_skips_a_flipped_row_names_it_and_ends_once_restored(
    rig: tuple[VaultService, KeyRotation], engine: Engine
) -> None:
    _rotate_past_a_flipped_row(rig, engine, "fingerprint")


def test_a_data_rotation_ends_once_the_unreadable_token_is_deleted(
    rig: tuple[VaultService, KeyRotation], engine: Engine
) -> None:
    service, rotation = rig
    tokens = _stored(service)
    bad = _row(engine, tokens[0])
    _flip(engine, bad.id, bytes(bad.ciphertext))
    ceremony = rotation.propose(ALICE, "data")
    rotation.approve(CAROL, ceremony.id)
    assert _drive(rotation, ceremony.id) == CeremonyState.RUNNING
    # The node's worker reports it to readiness (`key_rotation`), naming the token.
    worker = RotationWorker(rotation, interval=0.01)
    worker.start()
    try:
        for _ in range(3000):  # a far bound: fails only on a hang
            if worker.last_error is not None:
                break
            time.sleep(0.01)
    finally:
        worker.stop()
    reported = worker.last_error
    assert reported is not None
    assert "integrity_error" in reported or "authentication" in reported
    assert bad.id in reported
    assert service.delete(PAYMENTS, tokens[0])
    assert _drive(rotation, ceremony.id) == CeremonyState.COMPLETED
    for token, card in zip(tokens[1:], CARDS[1:], strict=True):
        assert service.detokenize(GETNET, token).pan == card


def test_a_fingerprint_rotation_names_a_row_restored_under_a_retired_data_key(
    rig: tuple[VaultService, KeyRotation], engine: Engine
) -> None:
    """bak38's restored row (its data key retired: the keyring refuses it with
    `integrity_error`) holds a fingerprint rotation back the same way; no backup can
    help (the key is retired for good), so the token is deleted and the rotation ends."""
    service, rotation = rig
    tokens = _stored(service)
    columns = "nonce, ciphertext, key_version, fp_version, fingerprint"
    with engine.connect() as connection:
        backup = connection.execute(
            sa.text(f"SELECT id, {columns} FROM tokens WHERE token = :t"),
            {"t": tokens[1]},
        ).one()
    data = rotation.propose(ALICE, "data")
    rotation.approve(CAROL, data.id)
    assert _drive(rotation, data.id) == CeremonyState.COMPLETED
    with engine.begin() as connection:  # the writer puts the row back from the backup
        connection.execute(
            sa.text(
                "UPDATE tokens SET nonce = :n, ciphertext = :c, key_version = :k WHERE id = :i"
            ),
            {"n": backup.nonce, "c": backup.ciphertext, "k": backup.key_version, "i": backup.id},
        )
    ceremony = rotation.propose(ALICE, "fingerprint")
    rotation.approve(CAROL, ceremony.id)
    assert _drive(rotation, ceremony.id) == CeremonyState.RUNNING
    assert rotation.status(ALICE, ceremony.id).stuck_tokens == [backup.id]
    assert service.delete(PAYMENTS, tokens[1])
    assert _drive(rotation, ceremony.id) == CeremonyState.COMPLETED
    for token, card in zip(tokens[2:], CARDS[2:], strict=True):
        assert service.detokenize(GETNET, token).pan == card
