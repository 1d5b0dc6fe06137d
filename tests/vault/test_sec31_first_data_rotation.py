"""Session 31: a data rotation approved before the vault sealed its first card ends.

A vault creates its data keys at its first call, so officers who rotate the data keys of
a vault that has served none start a rotation from "version 0"
(`test_a_data_rotation_before_the_first_data_key_starts`). Its migration then asked for
the cipher of data key v0, which does not exist, before looking for a record to move:
each pass of the rotation job raised `DataKeyMissing`, the ceremony stayed `running` for
good (it cannot be cancelled), and every later data rotation was refused while it "ran"
(PCI DSS 3.7.4: the data keys could never be changed again without editing the
database). A migration with nothing to move now finishes. SQLite and PostgreSQL, a
SoftHSM2 token of its own."""

from __future__ import annotations

from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.vault.conftest import ALICE, BOB, GETNET, OFFICERS, PAYMENTS, TEST_POLICY, rotation_of
from vault.ceremony import CeremonyState
from vault.pan import Pan, luhn_check_digit
from vault.service import TokenizeRequest, VaultService


def test_a_data_rotation_from_no_data_key_completes_and_the_next_one_runs(
    engine: Engine, rotation_provider: HSMProvider
) -> None:
    policy = PolicyEngine(parse_policy(TEST_POLICY + OFFICERS, kind="toml").policy)
    service = VaultService(engine, rotation_provider, policy)
    try:
        service.keyring.registry.adopt_if_empty(actor="test")  # what a start does
        rotation = rotation_of(service, engine, rotation_provider)
        first = rotation.propose(ALICE, "data")
        assert rotation.approve(BOB, first.id).state == CeremonyState.RUNNING
        for _ in range(10):  # bounded: a pass that raises fails the test at once
            rotation.run_pending()
        assert rotation.status(ALICE, first.id).state == CeremonyState.COMPLETED
        body = "5" + "2" * 14
        pan = Pan(body + luhn_check_digit(body))
        record = service.tokenize(PAYMENTS, TokenizeRequest(pan, "pan_bin6_last4"))
        # The next data rotation runs, and moves the card.
        second = rotation.propose(ALICE, "data")
        assert rotation.approve(BOB, second.id).state == CeremonyState.RUNNING
        for _ in range(10):
            rotation.run_pending()
        done = rotation.status(ALICE, second.id)
        assert (done.state, done.old_version, done.new_version) == ("completed", 1, 2)
        assert service.detokenize(GETNET, record.token).pan == pan
    finally:
        service.close()
