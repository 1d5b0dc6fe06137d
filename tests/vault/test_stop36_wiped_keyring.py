"""A background worker that outlives the stop's wipe of the data keys (review 36).

The stop joins the purge and rotation workers with a bound, and gives up on one that
does not end (a database or HSM that does not answer); it then wipes the unwrapped data
keys and closes the HSM session. Until session 36 `DataKeyring.wipe_all` only emptied
its cache: a rotation batch still running afterwards unwrapped the data keys again (the
provider reopens its sessions on the next call) and re-encrypted rows with them, after
the log had said ``data_keys=wiped``. A closed keyring now refuses: no key unwrapped
again, nothing written, the worker's tick fails closed (kept for its health, never a
500: the listeners are closed by then)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from tests.support.pans import card_number
from tests.vault.conftest import ALICE, BOB, PAYMENTS
from vault.errors import DataKeyMissing
from vault.keyring import KeyPurpose
from vault.pan import Pan
from vault.rotation import KeyRotation
from vault.rotation_worker import RotationWorker
from vault.service import TokenizeRequest, VaultService


def _versions(engine: Engine) -> list[tuple[int, int]]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT key_version, count(*) FROM tokens GROUP BY key_version")
        ).all()
    return sorted((int(v), int(n)) for v, n in rows)


def test_a_rotation_batch_after_the_stop_wipe_unwraps_nothing_and_writes_nothing(
    rig: tuple[VaultService, KeyRotation], engine: Engine
) -> None:
    service, rotation = rig
    for i in range(3):
        service.tokenize(
            PAYMENTS, TokenizeRequest(Pan(card_number("5", 36_100 + i)), "pan_bin6_last4")
        )
    ceremony = rotation.propose(ALICE, "data")
    assert rotation.approve(BOB, ceremony.id).state == "running"
    before = _versions(engine)
    keyring = service.keyring
    old = keyring.active_version(KeyPurpose.PAN_GCM)

    service.close()  # the stop's last step: the keys are wiped

    # The rotation worker's tick that was still running when the join gave up.
    with pytest.raises(DataKeyMissing, match="stopping"):
        rotation.run_pending()
    assert _versions(engine) == before  # no row re-encrypted
    with pytest.raises(DataKeyMissing):
        keyring.gcm(old)
    # Nothing unwrapped again: no clear key and no cipher holds one after the wipe.
    assert not keyring._clear
    assert not keyring._gcm
    assert not keyring._ff1


def test_the_rotation_worker_fails_closed_on_a_wiped_keyring(
    rig: tuple[VaultService, KeyRotation], engine: Engine
) -> None:
    """The worker's loop keeps the failure for its health and goes on to its stop."""
    service, rotation = rig
    service.tokenize(PAYMENTS, TokenizeRequest(Pan(card_number("5", 36_200)), "pan_bin6_last4"))
    ceremony = rotation.propose(ALICE, "data")
    assert rotation.approve(BOB, ceremony.id).state == "running"
    before = _versions(engine)
    service.close()
    worker = RotationWorker(rotation, interval=0.05)
    worker.start()
    try:
        for _ in range(600):  # a bounded wait for its first tick: fails only on a hang
            if worker.last_error is not None:
                break
            worker._stop.wait(0.05)
    finally:
        worker.stop()
    assert worker.last_error is not None
    assert "stopping" in worker.last_error
    assert _versions(engine) == before
