"""Review rev39 of bak38: what the vault makes of completion records it did not write.

A writer of the database without the HSM PIN may insert into the audit log (the app
role's grant; the log is append-only, so what they insert stays). bak38 reads every
``key.rotation.complete`` record to learn which data-key versions are retired
(`vault._retired_keys`), at each unwrap of a data key and each rotation worker pass,
and retention reads them before it drops a month. A record that starts like one but
is not JSON, or whose details are not an object, raised from ``json.loads`` or
``.get`` there: every node started after it could unwrap no data key (a raw
exception, the API's 500, for every reveal and tokenize), the rotation worker failed
every pass, for good. Such a record retires nothing (the vault writes canonical JSON
with an object of details), so it is now passed over. A well-formed forged completion
naming a high version stopped the vault for good until session 40: a completion now
counts only when it names the version the officers' signed start of its ceremony
rotated from (`vault._retired_keys`).

SoftHSM2, SQLite and PostgreSQL, the real vault service.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from tests.support.audit_trail import insert_record, malformed_records
from tests.support.backups import backup, restore_row
from tests.support.pans import card_number
from tests.support.softhsm import settled_ready
from tests.vault.conftest import GETNET, PAYMENTS
from tests.vault.test_bak38_restored_backup import _node, _rotate_data_keys
from vault.errors import IntegrityError
from vault.pan import Pan
from vault.rotation import KeyRotation
from vault.service import TokenizeRequest, VaultService
from vault.storage.schema import data_keys

CARD = Pan(card_number("453201", 39201))

# Session 39 (the lead, rev39's open question): the key registry's reader of
# `key.register` records raised the same way, on every tokenize's path (a 500 at every
# call of every node); the ceremony guards, custody, cryptoperiod and retention too.
_MALFORMED = {
    f"{action}-{name}": payload
    for action in ("key.rotation.complete", "key.register")
    for name, payload in malformed_records(action).items()
}


@pytest.mark.parametrize("payload", list(_MALFORMED.values()), ids=list(_MALFORMED))
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_malformed_record_does_not_stop_every_unwrap(
    rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    rotation_provider: HSMProvider,
    payload: str,
) -> None:
    service, rotation = rig
    token = service.tokenize(PAYMENTS, TokenizeRequest(CARD, "pan_bin6_last4")).token
    insert_record(engine, payload)  # the writer's insert
    rotation.run_pending()  # the worker's pass reads the records too
    fresh = _node(engine, rotation_provider)  # nothing unwrapped yet in its memory
    try:
        fresh.keyring.registry.registered(fresh=True)  # read from the log anew
        settled_ready(fresh.check_ready)
        assert fresh.detokenize(GETNET, token).pan == CARD
        other = Pan(card_number("453201", 39202))
        assert fresh.tokenize(PAYMENTS, TokenizeRequest(other, "pan_bin6_last4")).token
    finally:
        fresh.close()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_forged_data_completion_does_not_retire_the_live_key(
    rig: tuple[VaultService, KeyRotation], engine: Engine, rotation_provider: HSMProvider
) -> None:
    service, _ = rig
    token = service.tokenize(PAYMENTS, TokenizeRequest(CARD, "pan_bin6_last4")).token
    forged = (
        '{"action":"key.rotation.complete","actor":"cofre rotation",'
        '"details":{"kind":"data","retired_version":1000000},"outcome":"success"}'
    )
    insert_record(engine, forged)
    fresh = _node(engine, rotation_provider)
    try:
        assert fresh.detokenize(GETNET, token).pan == CARD
    finally:
        fresh.close()


@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_destroyed_key_restored_under_a_version_never_retired_does_not_open(
    rig: tuple[VaultService, KeyRotation], engine: Engine, rotation_provider: HSMProvider
) -> None:
    """Held: the writer puts v1's wrapped bytes back as version 9 (never retired, above
    the log's bound) and the shredded row back naming version 9. The KEK unwraps it, but
    the card was sealed with its version in the associated data: it fails
    authentication, `integrity_error`."""
    service, rotation = rig
    token = service.tokenize(PAYMENTS, TokenizeRequest(CARD, "pan_bin6_last4")).token
    row, keys = backup(engine, token)
    assert service.delete(PAYMENTS, token)
    _rotate_data_keys(rotation)
    with engine.begin() as connection:
        model = (
            connection.execute(
                sa.text("SELECT * FROM data_keys WHERE purpose = 'pan_gcm' AND state = 'active'")
            )
            .one()
            ._mapping
        )
        wrapped = next(
            k["wrapped"] for k in keys if k["purpose"] == "pan_gcm" and k["version"] == 1
        )
        connection.execute(
            sa.insert(data_keys),
            {
                **model,
                "version": 9,
                "wrapped": wrapped,
                "state": "retiring",
                "created_at": datetime.now(UTC),
            },
        )
    restore_row(engine, {**row, "key_version": 9})
    fresh = _node(engine, rotation_provider)
    try:
        with pytest.raises(IntegrityError):
            fresh.detokenize(GETNET, token)
    finally:
        fresh.close()
