"""An idempotency key first answered by convergence is recorded (review tok, F2).

docs/api.md: "the same key from the same caller returns the same token; reused for
another PAN it is `409 idempotency_conflict`". When the key's first call was answered by
convergence (the card already had a token in the domain), no row took the key: the key
sent again with another card was answered `200` with that card's new token, which then
held the key, and the first caller's own retry of its successful call was `409`. So
whoever in the domain learned or guessed a key (order numbers) could take it over and
turn the owner's retries into conflicts, and a `200` or `409` for a probe told whether
the key's card was held before. A token row cannot hold such a key (one token answers
many keys, and `UniqueConstraint("owner", "idempotency_key")`, review 39): every key's
first answer is recorded in ``idempotency_keys`` (migration 0018), in its transaction.

Each test runs on SQLite and PostgreSQL (the `service` and `engine` fixtures)."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.groups import in_one_group
from tests.support.pans import card_number
from tests.vault.conftest import PAYMENTS, TEST_POLICY
from vault.errors import BatchItemInvalid, IdempotencyConflict
from vault.models import CallContext, TokenRecord
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService

FORMAT = "pan_bin6_last4"  # convergent for 16 digits: a token hides 10^5 cards


def _request(card: str, key: str | None) -> TokenizeRequest:
    return TokenizeRequest(pan=Pan(card), format=FORMAT, idempotency_key=key)


def _cards(serial: int) -> tuple[str, str]:
    """A card the domain holds a token of, and another one; neither held yet."""
    return card_number("400000", serial), card_number("400000", serial + 1)


def test_a_key_first_answered_by_convergence_still_refuses_another_card(
    service: VaultService,
) -> None:
    held, other = _cards(882_001)
    service.tokenize(PAYMENTS, _request(held, None))
    key = "order-882001"
    first = service.tokenize(PAYMENTS, _request(held, key))
    assert first.existing  # answered by convergence

    with pytest.raises(IdempotencyConflict):
        service.tokenize(PAYMENTS, _request(other, key))
    again = service.tokenize(PAYMENTS, _request(held, key))
    assert again.token == first.token


def test_another_identity_of_the_domain_cannot_take_a_converged_key(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """The key is the domain's, whoever in it sent it: a second identity of the domain
    (the attacker who guessed an order number) is refused too."""
    shared = TEST_POLICY.replace(
        '[identities."spiffe://cofre/getnet-adapter"]',
        '[identities."spiffe://cofre/shop-b"]\noperations = ["tokenize"]\n'
        'formats = ["pan_bin6_last4"]\ndomain = "spiffe://cofre/payments"\n\n'
        '[identities."spiffe://cofre/getnet-adapter"]',
        1,
    )
    service = VaultService(
        engine, hsm_provider, PolicyEngine(parse_policy(shared, kind="toml").policy)
    )
    service.initialize()
    try:
        held, other = _cards(882_101)
        first_token = service.tokenize(PAYMENTS, _request(held, None)).token
        assert service.tokenize(PAYMENTS, _request(held, "order-882101")).existing
        attacker = CallContext("spiffe://cofre/shop-b", "req-shop-b")
        with pytest.raises(IdempotencyConflict):
            service.tokenize(attacker, _request(other, "order-882101"))
        assert service.tokenize(PAYMENTS, _request(held, "order-882101")).token == first_token
    finally:
        service.close()


# ------------------------------------------------------------------- the commit group


def _one_group(
    service: VaultService, requests: list[TokenizeRequest]
) -> list[Any]:  # futures of TokenRecord
    assert service._committer is not None

    def caller(index: int, request: TokenizeRequest) -> Callable[[], TokenRecord]:
        return lambda: service.tokenize(CallContext(PAYMENTS.identity, f"r{index}"), request)

    return in_one_group(
        service._committer, [caller(i, request) for i, request in enumerate(requests)]
    )


@pytest.mark.parametrize("converging_first", [True, False], ids=["converging-first", "new-first"])
def test_two_calls_with_one_key_in_one_commit_group_do_not_both_succeed(
    service: VaultService, converging_first: bool
) -> None:
    """Two callers send one key with different cards, one of them held (it converges),
    and meet in one commit group (one transaction, the calls one after another): the
    first is answered, the second is 409, and the first's retry gets its token."""
    held, other = _cards(882_201 + 10 * converging_first)
    key = f"order-group-{converging_first}"
    known = service.tokenize(PAYMENTS, _request(held, None))
    first, second = (held, other) if converging_first else (other, held)
    futures = _one_group(service, [_request(first, key), _request(second, key)])
    answered = futures[0].result(30)
    with pytest.raises(IdempotencyConflict):
        futures[1].result(30)
    assert answered.existing is converging_first
    if converging_first:
        assert answered.token == known.token
    assert service.tokenize(PAYMENTS, _request(first, key)).token == answered.token
    with pytest.raises(IdempotencyConflict):
        service.tokenize(PAYMENTS, _request(second, key))


def test_two_nodes_racing_one_key_do_not_both_succeed(
    service: VaultService,
    engine: Engine,
    hsm_provider: HSMProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two nodes (each its own committer and transaction) read a key as unused before
    either writes, one converging on a held card and one making a new token for another:
    on PostgreSQL both transactions then write, and the key's record must make one of
    them fail and run again, finding the other's (SQLite has one writer: the second
    transaction begins after the first committed)."""
    other_node = VaultService(
        engine, hsm_provider, PolicyEngine(parse_policy(TEST_POLICY, kind="toml").policy)
    )
    other_node.initialize()
    held, other = _cards(882_301)
    key = "order-race"
    service.tokenize(PAYMENTS, _request(held, None))

    import vault.operations.tokenize as tokenize_module  # noqa: PLC0415 - patched below

    real_conflict = tokenize_module.TokenizeOperations._key_conflict
    met, first_read = threading.Barrier(2), threading.Event()
    waited: set[int] = set()

    def meet_after_reading(self: Any, connection: Connection, *args: Any, **kwargs: Any) -> Any:
        answer = real_conflict(self, connection, *args, **kwargs)
        if threading.get_ident() not in waited:  # each node's first attempt only
            waited.add(threading.get_ident())
            first_read.set()
            with contextlib.suppress(threading.BrokenBarrierError):
                met.wait(3)  # SQLite: the other cannot begin; this one times out
        return answer

    monkeypatch.setattr(tokenize_module.TokenizeOperations, "_key_conflict", meet_after_reading)
    outcomes: list[TokenRecord | Exception] = [None, None]  # type: ignore[list-item]

    def call(slot: int, node: VaultService, card: str) -> None:
        try:
            outcomes[slot] = node.tokenize(PAYMENTS, _request(card, key))
        except Exception as exc:  # noqa: BLE001 - kept for the assertions
            outcomes[slot] = exc

    try:
        threads = [
            threading.Thread(target=call, args=(0, service, held)),
            threading.Thread(target=call, args=(1, other_node, other)),
        ]
        threads[0].start()  # the converging call reads first
        assert first_read.wait(30)
        threads[1].start()
        for thread in threads:
            thread.join(60)
    finally:
        other_node.close()
    answered = [o for o in outcomes if isinstance(o, TokenRecord)]
    refused = [o for o in outcomes if isinstance(o, IdempotencyConflict)]
    assert (len(answered), len(refused)) == (1, 1), outcomes
    winner = held if outcomes[0] is answered[0] else other
    loser = other if winner == held else held
    assert service.tokenize(PAYMENTS, _request(winner, key)).token == answered[0].token
    with pytest.raises(IdempotencyConflict):
        service.tokenize(PAYMENTS, _request(loser, key))


# ---------------------------------------------------------------------------- batches


def test_a_key_converged_in_a_batch_is_recorded(service: VaultService) -> None:
    held, other = _cards(882_401)
    known = service.tokenize(PAYMENTS, _request(held, None))
    filler = card_number("400000", 882_409)
    first, _ = service.tokenize_batch(
        PAYMENTS, [_request(held, "order-batch"), _request(filler, None)]
    )
    assert first.token == known.token
    with pytest.raises(IdempotencyConflict):
        service.tokenize(PAYMENTS, _request(other, "order-batch"))
    with pytest.raises(BatchItemInvalid) as refused:
        service.tokenize_batch(PAYMENTS, [_request(filler, None), _request(other, "order-batch")])
    assert (refused.value.index, refused.value.item_code) == (1, "idempotency_conflict")
    (again,) = service.tokenize_batch(PAYMENTS, [_request(held, "order-batch")])
    assert again.token == known.token


def test_a_batch_cannot_take_a_key_a_single_call_converged(service: VaultService) -> None:
    held, other = _cards(882_501)
    service.tokenize(PAYMENTS, _request(held, None))
    known = service.tokenize(PAYMENTS, _request(held, "order-single"))
    with pytest.raises(BatchItemInvalid) as refused:
        service.tokenize_batch(PAYMENTS, [_request(other, "order-single")])
    assert refused.value.item_code == "idempotency_conflict"
    assert service.tokenize(PAYMENTS, _request(held, "order-single")).token == known.token


def test_every_key_of_one_card_in_a_batch_is_recorded(service: VaultService) -> None:
    """Two items of one new card with two keys: the second converges on the first's new
    token (one row, which holds the first key only); the second key is recorded too."""
    card, other = _cards(882_601)
    first, second = service.tokenize_batch(
        PAYMENTS, [_request(card, "order-a"), _request(card, "order-b")]
    )
    assert second.token == first.token
    for key in ("order-a", "order-b"):
        with pytest.raises(IdempotencyConflict):
            service.tokenize(PAYMENTS, _request(other, key))
        assert service.tokenize(PAYMENTS, _request(card, key)).token == first.token


# ---------------------------------------------------------------- the rolling upgrade


def _forget_recorded_keys(engine: Engine) -> None:
    """The store as code before migration 0018 leaves it: keys on token rows alone."""
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM idempotency_keys"))


@pytest.mark.parametrize("token_format", ["card_random", FORMAT])
def test_a_key_on_a_token_row_written_by_older_code_still_answers_and_conflicts(
    service: VaultService, engine: Engine, token_format: str
) -> None:
    """A format that never converges (``dedup = "random"``) answers a retry from its key
    alone; a convergent one from the key too, and would from the card."""
    card, other = _cards(882_701 if token_format == FORMAT else 882_751)
    made = service.tokenize(PAYMENTS, TokenizeRequest(Pan(card), token_format, idempotency_key="o"))
    _forget_recorded_keys(engine)
    retry = TokenizeRequest(Pan(card), token_format, idempotency_key="o")
    again = service.tokenize(PAYMENTS, retry)
    assert (again.token, again.existing) == (made.token, True)
    (in_batch,) = service.tokenize_batch(PAYMENTS, [retry])
    assert in_batch.token == made.token
    guess = TokenizeRequest(Pan(other), token_format, idempotency_key="o")
    with pytest.raises(IdempotencyConflict):
        service.tokenize(PAYMENTS, guess)
    with pytest.raises(BatchItemInvalid):
        service.tokenize_batch(PAYMENTS, [guess])


def test_a_new_tokens_key_stays_on_its_row_for_older_nodes(
    service: VaultService, engine: Engine
) -> None:
    """Nodes still at 0017 read keys on token rows alone: a key that makes a token is
    written there as before, beside its record."""
    card, _ = _cards(882_801)
    made = service.tokenize(PAYMENTS, _request(card, "order-row"))
    with engine.connect() as connection:
        on_row = connection.execute(
            sa.text("SELECT idempotency_key FROM tokens WHERE id = :id"), {"id": made.token_id}
        ).scalar_one()
        recorded = connection.execute(
            sa.text("SELECT token_id FROM idempotency_keys WHERE idempotency_key = 'order-row'")
        ).scalar_one()
    assert (on_row, recorded) == ("order-row", made.token_id)


def test_a_recorded_key_wins_over_a_row_an_older_node_gave_it_meanwhile(
    service: VaultService, engine: Engine
) -> None:
    """A node at 0017 does not read records: during the upgrade it may give a recorded
    key to a new token of another card. The record is the key's first answer, and the
    one kept."""
    held, other = _cards(882_901)
    known = service.tokenize(PAYMENTS, _request(held, None))
    assert service.tokenize(PAYMENTS, _request(held, "order-mixed")).existing
    stray = service.tokenize(PAYMENTS, _request(other, "order-stray"))
    with engine.begin() as connection:  # what the older node wrote
        connection.execute(
            sa.text("DELETE FROM idempotency_keys WHERE idempotency_key = 'order-stray'")
        )
        connection.execute(
            sa.text("UPDATE tokens SET idempotency_key = 'order-mixed' WHERE id = :id"),
            {"id": stray.token_id},
        )
    assert service.tokenize(PAYMENTS, _request(held, "order-mixed")).token == known.token
    with pytest.raises(IdempotencyConflict):
        service.tokenize(PAYMENTS, _request(other, "order-mixed"))


# ------------------------------------------------------------------------- the domain


@pytest.fixture
def movable(engine: Engine, hsm_provider: HSMProvider) -> Iterator[VaultService]:
    service = VaultService(
        engine, hsm_provider, PolicyEngine(parse_policy(TEST_POLICY, kind="toml").policy)
    )
    service.initialize()
    yield service
    service.close()


def test_a_converged_key_used_before_a_domain_change_is_a_conflict(movable: VaultService) -> None:
    """docs/api.md: a key the caller used before a policy moved it to another domain is
    409, as for a key that made a token there."""
    held, _ = _cards(883_001)
    movable.tokenize(PAYMENTS, _request(held, None))
    assert movable.tokenize(PAYMENTS, _request(held, "order-moved")).existing
    moved = TEST_POLICY.replace(
        'reveal = "masked"\n# The service tests',
        'reveal = "masked"\ndomain = "spiffe://cofre/shop"\n# The service tests',
        1,
    )
    assert moved != TEST_POLICY
    movable.replace_policy(
        PolicyEngine(parse_policy(moved, kind="toml").policy), actor="ops", source="test"
    )
    with pytest.raises(IdempotencyConflict):
        movable.tokenize(PAYMENTS, _request(held, "order-moved"))
    with pytest.raises(BatchItemInvalid) as refused:
        movable.tokenize_batch(PAYMENTS, [_request(held, "order-moved")])
    assert refused.value.item_code == "idempotency_conflict"


# ------------------------------------------------------------------------ throughput


def _statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement run on the driver's cursor (`vault.storage.rawsql`)."""
    from vault.storage import rawsql  # noqa: PLC0415 - patched below

    seen: list[str] = []
    real = rawsql._run

    def counted(connection: Connection, sql: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(sql)
        return real(connection, sql, *args, **kwargs)

    monkeypatch.setattr(rawsql, "_run", counted)
    return seen


def _keyed(statements: list[str]) -> list[str]:
    """The statements that search keys or record one."""
    return [
        s
        for s in statements
        if "idempotency_keys" in s or re.search(r"idempotency_key (IN|=)", s) is not None
    ]


def test_a_call_without_a_key_costs_no_statement_and_one_with_a_key_one_more(
    service: VaultService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a key nothing reads or writes keys; with one, a key is read once in each
    place it may be kept (the token rows were read twice before) and recorded once."""
    card, other = _cards(883_101)
    service.tokenize(PAYMENTS, _request(card, None))
    seen = _statements(monkeypatch)
    service.tokenize(PAYMENTS, _request(other, None))
    assert _keyed(seen) == [], seen
    seen.clear()
    service.tokenize(PAYMENTS, _request(card, "order-count"))  # converges
    keyed = _keyed(seen)
    recorded = [s for s in keyed if "idempotency_keys" in s]
    # The token rows of the keys sent, and the caller's keys in other domains: once each
    # (the token rows were read twice before, once to check and once to answer).
    assert len(keyed) - len(recorded) == 2, keyed
    assert len(recorded) == 2, recorded  # one read, one insert
    assert any(s.startswith("INSERT INTO idempotency_keys") for s in recorded), recorded
