"""Review rev39 of rot38: a flood of ``key.rotation.row_unreadable`` records.

A writer of the database without the HSM PIN (the app role may insert into the audit
log, which is append-only) writes, once a data rotation runs, many
``key.rotation.row_unreadable`` records naming its ceremony and token ids that do not
exist. The rotation read them back as ids it had already found unreadable, and kept
every one of them out of each batch with ``id NOT IN (...)``, one bound parameter per
id, and read them again at its end and in its status with ``id IN (...)``. Past the
driver's limit of bound parameters (65,535 for psycopg, 250,000 for this SQLite) every
pass failed, and the status with it: the rotation could never complete, and no
operator action named in the runbook (restore or delete the named rows) could help,
since no such row exists and the log keeps the records for good. The documented bound
(docs/threat-model.md, rot38) is a stall that lasts until an operator acts on each
named row; this one lasted for ever. Also mass corruption (more unreadable rows than
the limit) failed the same way instead of naming them.

On SQLite and PostgreSQL with SoftHSM2."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from audit.schema import audit_entries
from tests.support.audit_trail import insert_record
from tests.support.pans import card_number
from tests.vault.conftest import ALICE, CAROL, GETNET, PAYMENTS
from vault.ceremony import CeremonyState
from vault.pan import Pan
from vault.rotation import KeyRotation
from vault.service import TokenizeRequest, VaultService
from vault.storage.schema import tokens as tokens_table

CARDS = [Pan(card_number("453201", 39100 + i)) for i in range(3)]
# Past each driver's limit of bound parameters in one statement.
_FLOOD = {"postgresql": 66_000, "sqlite": 251_000}


def _forge_unreadable_records(engine: Engine, ceremony_id: str, count: int) -> None:
    """The writer's inserts: records as the rotation writes them (canonical JSON,
    "action" first), naming the running ceremony and token ids no row has."""
    now = datetime.now(UTC)
    rows = [
        {
            "payload": json.dumps(
                {
                    "action": "key.rotation.row_unreadable",
                    "actor": "cofre rotation",
                    "key_id": ceremony_id,
                    "outcome": "failed",
                    "token_id": f"forged-{i:08d}",
                },
                sort_keys=True,
                separators=(",", ":"),
            ),
            "created_at": now,
        }
        for i in range(count)
    ]
    with engine.begin() as connection:
        connection.execute(sa.insert(audit_entries), rows)


@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_forged_unreadable_records_do_not_stall_a_data_rotation_for_ever(
    rig: tuple[VaultService, KeyRotation], engine: Engine
) -> None:
    service, rotation = rig
    tokens = [
        service.tokenize(PAYMENTS, TokenizeRequest(card, "pan_bin6_last4")).token for card in CARDS
    ]
    ceremony = rotation.propose(ALICE, "data")
    rotation.approve(CAROL, ceremony.id)
    _forge_unreadable_records(engine, ceremony.id, _FLOOD[engine.dialect.name])
    for _ in range(6):
        rotation.run_pending()
        if rotation.status(ALICE, ceremony.id).state == CeremonyState.COMPLETED:
            break
    status = rotation.status(ALICE, ceremony.id)
    assert status.state == CeremonyState.COMPLETED, "forged records stalled the rotation"
    assert status.stuck_tokens == []
    for token, card in zip(tokens, CARDS, strict=True):
        assert service.detokenize(GETNET, token).pan == card


@pytest.mark.parametrize(
    "payload",
    [
        '{"action":"key.rotation.row_unreadable","key_id":',
        '{"action":"key.rotation.row_unreadable","x":1}[]',
    ],
    ids=["not-json", "not-an-object"],
)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_malformed_unreadable_record_does_not_stall_a_data_rotation(
    rig: tuple[VaultService, KeyRotation], engine: Engine, payload: str
) -> None:
    """One record that starts like the rotation's but is not a JSON object: the worker's
    read of the ceremony's records raised at every pass, and the status with it."""
    service, rotation = rig
    token = service.tokenize(PAYMENTS, TokenizeRequest(CARDS[0], "pan_bin6_last4")).token
    ceremony = rotation.propose(ALICE, "data")
    rotation.approve(CAROL, ceremony.id)
    insert_record(engine, payload)
    for _ in range(6):
        rotation.run_pending()
        if rotation.status(ALICE, ceremony.id).state == CeremonyState.COMPLETED:
            break
    assert rotation.status(ALICE, ceremony.id).state == CeremonyState.COMPLETED
    assert service.detokenize(GETNET, token).pan == CARDS[0]


@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_more_unreadable_rows_than_one_read_of_ids_are_all_named_and_the_rest_move(
    rig: tuple[VaultService, KeyRotation], engine: Engine
) -> None:
    """1,500 rows copied under new ids (their ciphertexts bound to another row's id)
    among real ones: past the ids the batch leaves out by its statement, the rotation
    reads on in id order; every real row moves, every copy is named, none moved."""
    service, rotation = rig
    tokens = [
        service.tokenize(PAYMENTS, TokenizeRequest(card, "pan_bin6_last4")).token for card in CARDS
    ]
    with engine.begin() as connection:
        model = dict(
            connection.execute(sa.select(tokens_table).where(tokens_table.c.token == tokens[0]))
            .mappings()
            .one()
        )
        copies = [
            {**model, "id": f"copy-{i:05d}", "token": f"c{i:05d}", "fingerprint": None}
            for i in range(1_500)
        ]
        connection.execute(sa.insert(tokens_table), copies)
    ceremony = rotation.propose(ALICE, "data")
    rotation.approve(CAROL, ceremony.id)
    for _ in range(12):
        rotation.run_pending()
    status = rotation.status(ALICE, ceremony.id)
    assert status.state == CeremonyState.RUNNING
    assert status.stuck_tokens == sorted(c["id"] for c in copies)
    with engine.connect() as connection:
        versions = dict(
            connection.execute(sa.select(tokens_table.c.token, tokens_table.c.key_version)).all()
        )
    assert {versions[t] for t in tokens} == {status.new_version}
    assert {versions[c["token"]] for c in copies} == {status.old_version}
    with engine.begin() as connection:  # the runbook: the rows deleted
        connection.execute(sa.delete(tokens_table).where(tokens_table.c.id.like("copy-%")))
    for _ in range(6):
        rotation.run_pending()
    assert rotation.status(ALICE, ceremony.id).state == CeremonyState.COMPLETED
    for token, card in zip(tokens, CARDS, strict=True):
        assert service.detokenize(GETNET, token).pan == card
