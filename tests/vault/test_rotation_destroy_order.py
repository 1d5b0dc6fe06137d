"""Review cer: the destroy step of a KEK rotation re-wraps late data keys and destroys
the old KEK on the token in one database transaction. The destroy cannot be rolled
back: when that transaction then fails (its audit entry, its COMMIT), the re-wraps roll
back and the late data key stays wrapped under a KEK no token holds any more, taking
every token under it."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from audit.log import AuditEvent
from hsm.keys import KeyKind, key_label
from hsm.provider import HSMProvider
from tests.support.pans import card_number
from tests.vault.conftest import (
    ALICE,
    CAROL,
    DATA_KEYS,
    GETNET,
    PAYMENTS,
    until_destroy_pending,
    wrap_a_data_key_late,
)
from vault.ceremony import CeremonyState
from vault.pan import Pan
from vault.rotation import KeyRotation
from vault.service import TokenizeRequest, VaultService
from vault.storage.schema import key_ceremonies


def _pan(i: int) -> Pan:
    return Pan(card_number("5", i))


def _destroys(engine: Engine) -> int:
    """How many `key.destroy` entries the audit log holds."""
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.text("SELECT COUNT(*) FROM audit_entries WHERE payload LIKE :p"),
                {"p": '%"action":"key.destroy"%'},
            ).scalar_one()
        )


def test_a_failed_destroy_step_never_leaves_a_data_key_under_a_destroyed_kek(
    rig: tuple[VaultService, KeyRotation],
    rotation_provider: HSMProvider,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service, rotation = rig
    record = service.tokenize(PAYMENTS, TokenizeRequest(_pan(8), "pan_bin6_last4"))
    ceremony = rotation.propose(ALICE, "kek")
    rotation.approve(CAROL, ceremony.id)
    until_destroy_pending(rotation, ceremony.id)
    old, _ = wrap_a_data_key_late(engine, rotation_provider, rotation, ceremony.id)
    append = rotation._audit.append

    def failing(connection: Any, event: AuditEvent) -> Any:
        if event.action == "key.destroy":  # the database fails at the last step
            raise sa.exc.OperationalError("INSERT", {}, Exception("connection lost"))
        return append(connection, event)

    monkeypatch.setattr(rotation._audit, "append", failing)
    with pytest.raises(Exception):  # noqa: B017, PT011 - whichever error the outage is
        rotation.run_pending()
    monkeypatch.setattr(rotation._audit, "append", append)
    with engine.connect() as connection:
        labels = set(connection.execute(sa.select(DATA_KEYS.c.kek_label)).scalars())
    assert all(rotation_provider.has_key(label) for label in labels), (
        f"data keys wrapped under {labels}, token holds {old}: {rotation_provider.has_key(old)}"
    )
    for _ in range(100):
        rotation.run_pending()
    service.keyring.wipe_all()
    assert service.detokenize(GETNET, record.token).pan == _pan(8)


def test_two_nodes_destroying_one_old_key_record_one_destroy(
    rig: tuple[VaultService, KeyRotation], engine: Engine
) -> None:
    """Every node's rotation worker runs `run_pending`; two that read the ceremony
    `destroy_pending` at once each marked it completed and each wrote `key.destroy`: the
    evidence showed the key destroyed twice, by two passes of one ceremony."""
    _, rotation = rig
    ceremony = rotation.propose(ALICE, "fingerprint")
    rotation.approve(CAROL, ceremony.id)
    until_destroy_pending(rotation, ceremony.id)
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(key_ceremonies).where(key_ceremonies.c.id == ceremony.id)
        ).one()
    rotation._destroy_if_due(row)  # one node
    rotation._destroy_if_due(row)  # another, which read the row before the first finished
    assert _destroys(engine) == 1


@pytest.mark.parametrize("kind", ["kek", "fingerprint"])
def test_a_destroy_whose_audit_entry_cannot_be_written_does_not_happen(
    rig: tuple[VaultService, KeyRotation],
    rotation_provider: HSMProvider,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    """Fail closed: the old key was destroyed on the token first and its `key.destroy`
    entry written afterwards, so an audit log that refused the entry left a key gone
    with no record of it until a later pass (and none if the ceremony was then changed).
    Now the entry is written first, in the transaction that marks the ceremony done,
    and the key is destroyed only once it is in."""
    _, rotation = rig
    ceremony = rotation.propose(ALICE, kind)
    rotation.approve(CAROL, ceremony.id)
    assert until_destroy_pending(rotation, ceremony.id)
    with engine.connect() as connection:
        old = int(
            connection.execute(
                sa.select(key_ceremonies.c.old_version).where(key_ceremonies.c.id == ceremony.id)
            ).scalar_one()
        )
    label = key_label(KeyKind.KEK if kind == "kek" else KeyKind.FINGERPRINT, old)
    append = rotation._audit.append

    def refusing(connection: Any, event: AuditEvent) -> Any:
        if event.action == "key.destroy":
            raise sa.exc.OperationalError("INSERT", {}, Exception("audit log unavailable"))
        return append(connection, event)

    monkeypatch.setattr(rotation._audit, "append", refusing)
    with pytest.raises(Exception):  # noqa: B017, PT011 - whichever error the outage is
        rotation.run_pending()
    assert rotation_provider.has_key(label), "destroyed with no audit entry for it"
    assert rotation.status(ALICE, ceremony.id).state == CeremonyState.DESTROY_PENDING
    monkeypatch.setattr(rotation._audit, "append", append)
    rotation.run_pending()
    assert not rotation_provider.has_key(label)
    assert rotation.status(ALICE, ceremony.id).state == CeremonyState.COMPLETED
    assert _destroys(engine) == 1


@pytest.mark.parametrize("kind", ["kek", "fingerprint"])
def test_rev26_a_commit_failing_after_the_destroy_is_recorded_by_the_next_pass(
    rig: tuple[VaultService, KeyRotation],
    rotation_provider: HSMProvider,
    engine: Engine,
    kind: str,
) -> None:
    """Review 26, 2ba38ae: the destroy now runs inside the transaction that records it.
    If that transaction's COMMIT fails after the token destroyed the key, the ceremony
    must stay destroy_pending (not lost) and the next pass complete it with one
    `key.destroy` entry and no second destroy. (Expected to hold.)"""
    _, rotation = rig
    ceremony = rotation.propose(ALICE, kind)
    rotation.approve(CAROL, ceremony.id)
    assert until_destroy_pending(rotation, ceremony.id)
    destroyed: list[str] = []
    real = rotation_provider.destroy_key

    def then_fails(label: str) -> None:
        real(label)
        destroyed.append(label)
        if len(destroyed) == 1:  # the token is done; the COMMIT that follows fails
            raise sa.exc.OperationalError("COMMIT", {}, Exception("connection lost"))

    rotation_provider.destroy_key = then_fails  # type: ignore[method-assign]
    try:
        with pytest.raises(Exception):  # noqa: B017, PT011
            rotation.run_pending()
        assert rotation.status(ALICE, ceremony.id).state == CeremonyState.DESTROY_PENDING
        rotation.run_pending()
    finally:
        del rotation_provider.destroy_key
    assert rotation.status(ALICE, ceremony.id).state == CeremonyState.COMPLETED
    assert len(destroyed) == 1
    assert _destroys(engine) == 1
