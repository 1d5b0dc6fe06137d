"""Review rev39's open question: the key registry's reader of log records.

A writer of the database without the HSM PIN may insert into the audit log (the app
role's grant; the log is append-only, so what they insert stays). The key registry,
the cryptoperiod view, the custody records, the ceremony guards and retention each
select records by a `LIKE` on the payload's start and parsed what they found with
``json.loads(...).get(...)``: a record that starts like one but is not JSON, or whose
details are not an object, raised there. In the key registry (read from every
tokenize's path, tested here) that was a raw exception, the API's `500 internal_error`, for every
call of every node, for good. The vault writes canonical JSON objects only, so such a
record says nothing and is passed over, as rev39 made bak38's and rot38's readers do.

SoftHSM2, SQLite and PostgreSQL, the real vault service.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from tests.support.audit_trail import insert_record, malformed_records
from tests.support.pans import card_number
from tests.vault.conftest import GETNET, PAYMENTS
from tests.vault.test_bak38_restored_backup import _node
from vault.pan import Pan
from vault.rotation import KeyRotation
from vault.service import TokenizeRequest, VaultService

_MALFORMED = malformed_records("key.register")


@pytest.mark.parametrize("payload", list(_MALFORMED.values()), ids=list(_MALFORMED))
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_malformed_record_does_not_stop_the_vault(
    rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    rotation_provider: HSMProvider,
    payload: str,
) -> None:
    service, rotation = rig
    card = Pan(card_number("453201", 39301))
    token = service.tokenize(PAYMENTS, TokenizeRequest(card, "pan_bin6_last4")).token
    insert_record(engine, payload)  # the writer's insert
    rotation.run_pending()
    fresh = _node(engine, rotation_provider)  # reads the registry from the log anew
    try:
        fresh.keyring.registry.registered(fresh=True)
        fresh.check_ready()
        assert fresh.detokenize(GETNET, token).pan == card
        other = Pan(card_number("453201", 39302))
        assert fresh.tokenize(PAYMENTS, TokenizeRequest(other, "pan_bin6_last4")).token
    finally:
        fresh.close()
