"""Issue 21: single tokenize calls of one identity that meet in a commit group run as
one batch (`TokenizeOperations._run_merged`), one insert for all of them. Each call
must get what it would alone, the calls one after another, and its own audit entry in
its own trail. Calls with an idempotency key, a security code or card details run
alone."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from audit.log import request_trail
from tests.support.groups import in_one_group
from tests.vault.conftest import ALICE, BOB, GETNET, PAYMENTS
from vault.errors import IdempotencyConflict
from vault.models import CallContext, TokenRecord
from vault.pan import Pan
from vault.rotation import KeyRotation
from vault.service import TokenizeRequest, VaultService
from vault.storage.rawsql import insert_many

CARD_A, CARD_B, CARD_C = Pan("4111111111111111"), Pan("5555555555554444"), Pan("4012888888881881")
STORED = Pan("4000056655665556")


def _one_group(
    service: VaultService,
    calls: Sequence[tuple[str, TokenizeRequest]],
    before: Callable[[str], None] = lambda _request_id: None,
) -> list[Future[tuple[TokenRecord, list[int]]]]:
    """Each call (request id, request) from a caller of its own, in this order, in one
    commit group; `before(request id)` runs in the caller just before it calls."""
    assert service._committer is not None

    def caller(request_id: str, request: TokenizeRequest) -> Callable[[], Any]:
        def call() -> tuple[TokenRecord, list[int]]:
            before(request_id)
            with request_trail() as trail:
                ctx = CallContext(PAYMENTS.identity, request_id)
                return service.tokenize(ctx, request), trail

        return call

    return in_one_group(service._committer, [caller(*call) for call in calls])


def _entries(engine: Engine, ids: list[int]) -> list[dict[str, Any]]:
    with engine.connect() as c:
        rows = c.execute(
            sa.text("SELECT payload FROM audit_entries WHERE id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            ),
            {"ids": ids},
        )
        return [json.loads(payload) for (payload,) in rows]


def _count_inserts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows of each token insert."""
    inserts: list[int] = []
    real = insert_many

    def counted(connection: Connection, table: sa.Table, rows: Sequence[Any]) -> None:
        inserts.append(len(rows))
        real(connection, table, rows)

    monkeypatch.setattr("vault.operations.tokenize.insert_many", counted)
    return inserts


def test_calls_in_one_group_share_one_insert_and_get_what_each_would_alone(
    service: VaultService, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = service.tokenize(PAYMENTS, TokenizeRequest(STORED, "pan_bin6_last4"))
    inserts = _count_inserts(monkeypatch)
    calls = [
        ("r1", TokenizeRequest(CARD_A, "pan_bin6_last4")),
        ("r2", TokenizeRequest(CARD_B, "pan_bin6_last4")),
        ("r3", TokenizeRequest(CARD_A, "pan_bin6_last4")),  # as r1's, once r1 stored it
        ("r4", TokenizeRequest(STORED, "pan_bin6_last4")),  # converges on the stored one
        ("r5", TokenizeRequest(CARD_A, "card_random")),  # random: a token of its own
    ]
    answers = [f.result(30) for f in _one_group(service, calls)]
    assert inserts == [3]  # r1, r2 and r5, in one insert
    records = [record for record, _ in answers]
    assert [r.existing for r in records] == [False, False, True, True, False]
    assert records[2].token == records[0].token
    assert records[2].token_id == records[0].token_id
    assert records[3].token == stored.token
    assert len({records[0].token, records[1].token, records[4].token, stored.token}) == 4
    results = ["new", "new", "convergent", "convergent", "new"]
    for (request_id, _), (record, trail), result in zip(calls, answers, results, strict=True):
        assert len(trail) == 1  # its own entry, in its own trail
        (entry,) = _entries(engine, trail)
        assert entry["request_id"] == request_id
        assert entry["action"] == "tokenize"
        assert entry["token_id"] == record.token_id
        assert entry["details"]["result"] == result
    for (_, request), record in zip(calls, records, strict=True):  # each its own card
        revealed = service.detokenize(GETNET, record.token)
        assert revealed.pan == request.pan


def test_a_conflict_in_a_group_answers_each_call_as_alone(
    service: VaultService, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    inserts = _count_inserts(monkeypatch)
    calls = [
        ("r1", TokenizeRequest(CARD_A, "card_random", idempotency_key="k")),
        ("r2", TokenizeRequest(CARD_B, "card_random", idempotency_key="k")),  # another card
        ("r3", TokenizeRequest(CARD_C, "card_random")),
    ]
    futures = _one_group(service, calls)
    first, _ = futures[0].result(30)
    with pytest.raises(IdempotencyConflict):
        futures[1].result(30)
    third, trail = futures[2].result(30)
    assert inserts == [1, 1]  # the group ran again, each call alone: r1, then r3
    assert not first.existing
    assert not third.existing
    (entry,) = _entries(engine, trail)
    assert entry["request_id"] == "r3"
    again = service.tokenize(PAYMENTS, TokenizeRequest(CARD_A, "card_random", idempotency_key="k"))
    assert again.token == first.token


def test_a_key_sent_twice_in_a_batch_is_audited_as_idempotent(
    service: VaultService, engine: Engine
) -> None:
    """The second item is answered by the first's key, as a second call alone is."""
    again = TokenizeRequest(CARD_A, "card_random", idempotency_key="again")
    with request_trail() as trail:
        first, second = service.tokenize_batch(PAYMENTS, [again, again])
    assert second.token == first.token
    assert second.existing
    entries = sorted(_entries(engine, trail), key=lambda entry: entry["details"]["result"])
    assert [entry["details"]["result"] for entry in entries] == ["idempotent", "new"]


def test_calls_with_an_idempotency_key_run_alone(
    service: VaultService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conflict (answered 409) would make a merged group run again, each call alone:
    keyed calls are not merged, so that a caller cannot double its group's work."""
    inserts = _count_inserts(monkeypatch)
    calls = [
        (f"r{i}", TokenizeRequest(card, "card_random", idempotency_key=f"k{i}"))
        for i, card in enumerate([CARD_A, CARD_B, CARD_C])
    ]
    records = [f.result(30)[0] for f in _one_group(service, calls)]
    assert inserts == [1, 1, 1]
    assert len({record.token for record in records}) == 3


def test_calls_with_card_details_run_one_after_another(
    service: VaultService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reissued card's new expiry replaces the stored one; two such calls in a group
    are not a batch (which keeps the first's), so the later call's expiry is kept."""
    inserts = _count_inserts(monkeypatch)
    calls = [
        ("r1", TokenizeRequest(CARD_A, "pan_bin6_last4", expiry="03/29")),
        ("r2", TokenizeRequest(CARD_A, "pan_bin6_last4", expiry="04/31")),
    ]
    (first, _), (second, _) = [f.result(30) for f in _one_group(service, calls)]
    assert inserts == [1]
    assert second.token == first.token
    assert service.detokenize(GETNET, first.token).expiry == "2031-04"


def test_a_key_an_earlier_item_did_not_store_answers_by_convergence(
    service: VaultService, engine: Engine
) -> None:
    """The card already has a token made without a key. A first item with key K is
    answered by convergence, and K is stored nowhere; so a second item with K is
    answered by convergence too, as a second call alone would be."""
    stored = service.tokenize(PAYMENTS, TokenizeRequest(CARD_A, "pan_bin6_last4"))
    keyed = TokenizeRequest(CARD_A, "pan_bin6_last4", idempotency_key="K")
    with request_trail() as trail:
        records = service.tokenize_batch(PAYMENTS, [keyed, keyed])
    assert [record.token for record in records] == [stored.token, stored.token]
    results = [entry["details"]["result"] for entry in _entries(engine, trail)]
    assert results == ["convergent", "convergent"]


def test_calls_planned_across_a_fingerprint_rotation_start_are_not_one_batch(
    rig: tuple[VaultService, KeyRotation],
) -> None:
    """Review 10: r1 is planned with the version list cached just before a fingerprint
    rotation started (a worker's cache may be a second old), r2 just after. Alone, one
    after another, r2 finds r1's row under the old key (it looks under both) and
    converges; as one batch neither found the other, the card got two convergent
    tokens, and the rotation could never move r1's row onto the new key."""
    service, rotation = rig
    old = list(service._fingerprint_versions())
    ceremony = rotation.propose(ALICE, "fingerprint")
    rotation.approve(BOB, ceremony.id)

    def cache(request_id: str) -> None:
        if request_id == "r1":  # the list from before the approval, still fresh
            service._fp_versions, service._fp_read = old, time.monotonic()
        else:  # read again: both versions
            service._fp_read = 0.0

    calls = [
        ("r1", TokenizeRequest(CARD_A, "pan_bin6_last4")),
        ("r2", TokenizeRequest(CARD_A, "pan_bin6_last4")),
    ]
    (first, _), (second, _) = [f.result(30) for f in _one_group(service, calls, cache)]
    assert second.token == first.token
    for _ in range(1000):
        rotation.run_pending()
        if rotation.status(ALICE, ceremony.id).state == "completed":
            break
    assert rotation.status(ALICE, ceremony.id).state == "completed"
