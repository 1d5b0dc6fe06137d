"""Review 27 (attack): idempotency keys recorded with their first answer (F2, migration
0018, `vault.operations._idempotency`).

The attacker holds one stolen client certificate that may tokenize. A test that shows a
finding fails on the code as it is; a documented bound is `xfail(strict=True)`; the rest
confirm a property. Real SoftHSM2 token (and the CloudHSM shim), SQLite and PostgreSQL
(the `service` / `engine` fixtures)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from tests.support.groups import one_answered_one_409_in_one_group
from tests.support.pans import card_number
from tests.support.policies import vault_on
from tests.vault.conftest import PAYMENTS, TEST_POLICY
from vault.errors import (
    BatchItemInvalid,
    IdempotencyConflict,
    InvalidMetadata,
    OracleSuspected,
    TokenDeleted,
    TokenExpired,
)
from vault.models import CallContext, TokenRecord
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService

FORMAT = "pan_bin6_last4"  # convergent for 16 digits: a token hides 10^5 cards
SHOP_B = CallContext("spiffe://cofre/shop-b", "req-shop-b")  # payments' domain, guard 10
SHOP_C = CallContext("spiffe://cofre/shop-c", "req-shop-c")  # a domain of its own

POLICY = TEST_POLICY.replace(
    '[identities."spiffe://cofre/getnet-adapter"]',
    '[identities."spiffe://cofre/shop-b"]\noperations = ["tokenize", "delete"]\n'
    'formats = ["pan_bin6_last4"]\ndomain = "spiffe://cofre/payments"\n\n'
    '[identities."spiffe://cofre/shop-c"]\noperations = ["tokenize"]\n'
    'formats = ["pan_bin6_last4"]\n\n'
    '[identities."spiffe://cofre/getnet-adapter"]',
    1,
)


@pytest.fixture
def shared(engine: Engine, hsm_provider: HSMProvider) -> Iterator[VaultService]:
    """A vault whose payments domain has a second identity (shop-b, the default oracle
    guard of 10 cards per bucket) and a third identity in a domain of its own."""
    service = vault_on(engine, hsm_provider, POLICY)
    yield service
    service.close()


def _request(card: str, key: str | None, ttl: int | None = None) -> TokenizeRequest:
    return TokenizeRequest(pan=Pan(card), format=FORMAT, idempotency_key=key, ttl_seconds=ttl)


def _recorded(engine: Engine, key: str) -> list[tuple[str, str, str]]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT domain, owner, token_id FROM idempotency_keys"
                " WHERE idempotency_key = :k ORDER BY domain"
            ),
            {"k": key},
        ).all()
    return [(str(d), str(o), str(t)) for d, o, t in rows]


def _converged_key(service: VaultService, serial: int, key: str) -> tuple[TokenRecord, str]:
    """Payments holds a card's token, then sends `key` with that card (answered by
    convergence, so the key is recorded only in `idempotency_keys`). Returns the token
    and the card."""
    held = card_number("400000", serial)
    known = service.tokenize(PAYMENTS, _request(held, None))
    assert service.tokenize(PAYMENTS, _request(held, key)).existing
    return known, held


# ----------------------------------------------------------------------------- races


@pytest.mark.parametrize("converging_first", [True, False], ids=["converging-first", "new-first"])
def test_two_identities_of_one_domain_racing_one_key_in_one_commit_group(
    shared: VaultService, engine: Engine, converging_first: bool
) -> None:
    """Payments and shop-b (one domain: the key is the domain's) send one new key with
    two cards and meet in one commit group (two merge groups, one transaction): one is
    answered, the other 409; never both, and never a 500 from the record's primary
    key."""
    assert shared._committer is not None
    held = card_number("400000", 884_001 + 10 * converging_first)
    other = card_number("400000", 884_002 + 10 * converging_first)
    shared.tokenize(PAYMENTS, _request(held, None))
    key = f"order-two-ids-{converging_first}"
    first, second = (held, other) if converging_first else (other, held)
    one_answered_one_409_in_one_group(
        shared, [(PAYMENTS, _request(first, key)), (SHOP_B, _request(second, key))]
    )
    assert len(_recorded(engine, key)) == 1


# ------------------------------------------------------------------ domains and oracle


def test_a_key_recorded_in_one_domain_neither_answers_nor_refuses_in_another(
    shared: VaultService, engine: Engine
) -> None:
    """Shop-c (another domain) sending payments' recorded key gets its own answer: the
    held card's token in its domain (not payments'), and no 409 that would tell it the
    key is in use elsewhere; the key is then recorded for both domains."""
    known, held = _converged_key(shared, 884_101, "order-cross")
    other = card_number("400000", 884_102)
    theirs = shared.tokenize(SHOP_C, _request(other, "order-cross"))
    assert theirs.token != known.token
    assert not theirs.existing
    assert shared.tokenize(SHOP_C, _request(held, "order-x2")).token != known.token
    assert [d for d, _, _ in _recorded(engine, "order-cross")] == [
        "spiffe://cofre/payments",
        "spiffe://cofre/shop-c",
    ]


def _same_bucket(card: str, count: int) -> list[str]:
    """`count` Luhn-valid cards with `card`'s first six and last four, not `card`."""
    out = []
    for middle in range(10**5, 10**6):
        body = f"{card[:6]}{middle:06d}{card[12:15]}"
        total = 0
        for position, digit in enumerate(reversed(body + card[15])):
            value = int(digit) * (2 if position % 2 else 1)
            total += value - 9 if value > 9 else value
        candidate = body + card[15]
        if total % 10 == 0 and candidate != card:
            out.append(candidate)
            if len(out) == count:
                return out
    raise AssertionError("no such cards")


def test_409s_on_another_identity_s_converged_key_are_charged_to_the_guard(
    shared: VaultService,
) -> None:
    """Shop-b (guard: 10 cards per BIN and last four) guesses the card behind a key
    payments recorded by convergence: each wrong guess is 409, and each counts, so the
    guard stops it at the limit (429) before the guesses can walk the bucket."""
    _, held = _converged_key(shared, 884_201, "order-guard")
    refused = 0
    with pytest.raises(OracleSuspected):
        for guess in _same_bucket(held, 30):
            try:
                shared.tokenize(SHOP_B, _request(guess, "order-guard"))
            except IdempotencyConflict:
                refused += 1
    assert 1 <= refused <= 10, refused


def test_a_deleted_converged_token_s_key_is_410_for_every_card_and_identity(
    shared: VaultService, engine: Engine
) -> None:
    """Payments deletes the token its key converged on: the key is 410 token_deleted for
    the right card, a wrong one and another identity of the domain; no new token takes
    the key, and its record still names the shredded token (no FK trouble)."""
    known, held = _converged_key(shared, 884_301, "order-deleted")
    assert shared.delete(PAYMENTS, known.token)
    other = card_number("400000", 884_302)
    for ctx, card in ((PAYMENTS, held), (PAYMENTS, other), (SHOP_B, held)):
        with pytest.raises(TokenDeleted):
            shared.tokenize(ctx, _request(card, "order-deleted"))
    assert _recorded(engine, "order-deleted") == [
        ("spiffe://cofre/payments", PAYMENTS.identity, known.token_id)
    ]


def test_an_expired_converged_token_s_key_stays_410_after_the_card_gets_a_new_one(
    shared: VaultService, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key converged on a token with a lifetime; once it expired, a convergent call
    of the card shreds it and makes a new token: the key stays 410 (use a new key),
    never answers the new token, and the purge runs with the record in place."""
    held = card_number("400000", 884_401)
    made = shared.tokenize(PAYMENTS, _request(held, None, ttl=60))
    # Asking the same life: a hit asked to live longer is extended (6e891dd).
    assert shared.tokenize(PAYMENTS, _request(held, "order-exp", ttl=60)).token == made.token
    later = datetime.now(UTC) + timedelta(seconds=120)
    monkeypatch.setattr(shared, "_clock", lambda: later)
    with pytest.raises(TokenExpired):
        shared.tokenize(PAYMENTS, _request(held, "order-exp"))
    fresh = shared.tokenize(PAYMENTS, _request(held, None))
    assert fresh.token != made.token
    with pytest.raises(TokenExpired):
        shared.tokenize(PAYMENTS, _request(held, "order-exp"))
    shared.purge_expired()
    assert _recorded(engine, "order-exp")[0][2] == made.token_id


# ------------------------------------------------------------------------- what is kept


@pytest.mark.parametrize(
    "key",
    [
        "4111111111111111",
        "4111-1111-1111-1111",
        "4111.1111.1111.1111",
        "4111:1111:1111:1111",
        "4111_1111_1111_1111",
        "order-4111111111111111",
        "4111111111111111-retry",
    ],
)
def test_a_pan_shaped_key_is_refused_before_it_is_recorded(
    shared: VaultService, engine: Engine, key: str
) -> None:
    """Keys are kept in clear: one that holds a card number is 422 invalid_metadata,
    also on a call that would converge (the path that now records), and nothing is
    stored under it."""
    held = card_number("400000", 884_501)
    shared.tokenize(PAYMENTS, _request(held, None))
    with pytest.raises(InvalidMetadata):
        shared.tokenize(PAYMENTS, _request(held, key))
    with pytest.raises(BatchItemInvalid):
        shared.tokenize_batch(PAYMENTS, [_request(held, key)])
    assert _recorded(engine, key) == []


def test_a_refused_call_records_none_of_its_keys(shared: VaultService, engine: Engine) -> None:
    """A batch refused for one item's conflict commits its charge and nothing else: the
    other item's new key is not recorded (it is free for its real first use)."""
    _, held = _converged_key(shared, 884_601, "order-taken")
    other = card_number("400000", 884_602)
    with pytest.raises(BatchItemInvalid):
        shared.tokenize_batch(
            PAYMENTS, [_request(held, "order-innocent"), _request(other, "order-taken")]
        )
    assert _recorded(engine, "order-innocent") == []
    assert shared.tokenize(PAYMENTS, _request(other, "order-innocent")).token


def test_another_identity_of_the_domain_retrying_a_converged_key_writes_no_second_record(
    shared: VaultService, engine: Engine
) -> None:
    """The record's owner constraint (owner, key) and the primary key (domain, key)
    never make a retry a 500: payments' key, sent again by shop-b with the same card
    (same domain), is answered payments' token and writes no second record."""
    known, held = _converged_key(shared, 884_701, "order-shared")
    assert shared.tokenize(SHOP_B, _request(held, "order-shared")).token == known.token
    assert len(_recorded(engine, "order-shared")) == 1


def test_one_card_with_many_keys_does_not_grow_the_table_without_bound(
    shared: VaultService, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each record is kept for the window (`COFRE_TOKENS__IDEMPOTENCY_KEY_TTL_HOURS`, 24 h
    by default) and the purge then removes it: the table holds at most the keys of one
    window (bounded by the rate limit times the window), not every key ever sent."""
    held = card_number("400000", 884_801)
    shared.tokenize(PAYMENTS, _request(held, None, ttl=60))
    for n in range(50):
        shared.tokenize(PAYMENTS, _request(held, f"flood-{n}"))
    later = datetime.now(UTC) + timedelta(hours=24, minutes=1)
    monkeypatch.setattr(shared, "_clock", lambda: later)
    shared.purge_expired()
    with engine.connect() as connection:
        count = connection.execute(
            sa.text("SELECT count(*) FROM idempotency_keys WHERE idempotency_key LIKE 'flood-%'")
        ).scalar_one()
    assert count < 50
