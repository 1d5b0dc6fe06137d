"""Review 38: a destroyed data key leaves the memory of every vault process, not only
that of the process whose rotation worker finished the job.

Every `cofre serve` worker on every node unwraps the data keys it uses and keeps them
(`DataKeyring`). When a data rotation completes, the process that ran its last batch
erases the old version's wrapped bytes and wipes its own copy (`forget_retired`); every
other process keeps the clear old key (and its cipher objects) until it restarts, for
months. A memory dump of any of them then opens every backup of the database taken
before the rotation (docs/threat-model.md says data keys are wiped on rotation). Each
process's rotation worker ticks twice a second: there it can drop what was destroyed."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.vault.conftest import ALICE, BOB, GETNET, OFFICERS, PAYMENTS, TEST_POLICY, rotation_of
from vault.ceremony import CeremonyState
from vault.pan import Pan, luhn_check_digit
from vault.service import TokenizeRequest, VaultService


def _node(engine: Engine, provider: HSMProvider) -> VaultService:
    service = VaultService(
        engine, provider, PolicyEngine(parse_policy(TEST_POLICY + OFFICERS, kind="toml").policy)
    )
    service.initialize()
    return service


@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_process_wipes_a_destroyed_data_key(
    engine: Engine, rotation_provider: HSMProvider
) -> None:
    here, there = _node(engine, rotation_provider), _node(engine, rotation_provider)
    try:
        body = "52000000" + "1234567"
        pan = Pan(body + luhn_check_digit(body))
        record = there.tokenize(PAYMENTS, TokenizeRequest(pan, "pan_bin6_last4"))
        assert there.detokenize(GETNET, record.token).pan == pan  # `there` holds v1 now
        rotation = rotation_of(here, engine, rotation_provider)
        ceremony = rotation.propose(ALICE, "data")
        rotation.approve(BOB, ceremony.id)
        for _ in range(100):
            rotation.run_pending()
            if rotation.status(ALICE, ceremony.id).state == CeremonyState.COMPLETED:
                break
        old = int(rotation.status(ALICE, ceremony.id).old_version or 0)
        # `there`'s own rotation worker ticks (nothing left to run).
        rotation_of(there, engine, rotation_provider).run_pending()
        held = [k for k in there.keyring._clear if k[1] == old]
        assert not held, f"a process still holds destroyed data keys {held} in clear"
        assert old not in there.keyring._gcm
        assert there.detokenize(GETNET, record.token).pan == pan
    finally:
        here.close()
        there.close()
