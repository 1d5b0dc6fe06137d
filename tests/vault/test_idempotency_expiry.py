"""An idempotency key whose token has expired (review tok, F1).

Every other path treats a token past its `ttl_seconds` as gone: detokenize and metadata
answer `410 token_expired`, and a convergent tokenize shreds it and issues a new token.
A retry with the idempotency key that made it answered the dead token as a success
(`200`, `"existing": true`, an `expires_at` in the past), so a client retrying a
timed-out call was handed a token every reveal refuses, and the card details (expiry,
name) and security code the retry carried were sealed into and held for that dead
token until the purge shredded it. The key's answer must say the token expired."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.pans import card_number
from tests.vault.conftest import LEDGER, PAYMENTS, TEST_POLICY
from vault.errors import BatchItemInvalid, TokenDeleted, TokenExpired, VaultError
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def vault(engine: Engine, hsm_provider: HSMProvider, clock: Clock) -> Iterator[VaultService]:
    service = VaultService(
        engine,
        hsm_provider,
        PolicyEngine(parse_policy(TEST_POLICY, kind="toml").policy),
        clock=clock,
    )
    service.initialize()
    yield service
    service.close()


def _retry_is_refused(
    vault: VaultService, card: str, token_format: str, key: str, error: type[VaultError]
) -> None:
    """A retry with `key` raises `error` alone, and in a batch is its item's code."""
    request = TokenizeRequest(pan=Pan(card), format=token_format, idempotency_key=key)
    with pytest.raises(error):
        vault.tokenize(PAYMENTS, request)
    with pytest.raises(BatchItemInvalid) as refused:
        vault.tokenize_batch(PAYMENTS, [request])
    assert (refused.value.index, refused.value.item_code) == (0, error.code)


@pytest.mark.parametrize("token_format", ["card_random", "pan_bin6_last4"])
def test_a_retry_with_the_key_of_an_expired_token_is_not_answered_that_token(
    vault: VaultService, clock: Clock, token_format: str
) -> None:
    card = card_number("400000", 881_001 if token_format == "card_random" else 881_002)
    key = f"order-expiring-{token_format}"
    first = vault.tokenize(
        PAYMENTS,
        TokenizeRequest(pan=Pan(card), format=token_format, idempotency_key=key, ttl_seconds=60),
    )
    clock.now += timedelta(seconds=120)
    with pytest.raises(TokenExpired):
        vault.detokenize(LEDGER, first.token)

    _retry_is_refused(vault, card, token_format, key, TokenExpired)


def test_a_retry_with_the_key_of_a_live_token_still_answers_it(
    vault: VaultService, clock: Clock
) -> None:
    card = card_number("400000", 881_003)
    request = TokenizeRequest(
        pan=Pan(card), format="card_random", idempotency_key="order-live", ttl_seconds=60
    )
    first = vault.tokenize(PAYMENTS, request)
    clock.now += timedelta(seconds=30)
    again = vault.tokenize(PAYMENTS, request)
    assert (again.token, again.existing) == (first.token, True)


@pytest.mark.parametrize("token_format", ["card_random", "pan_bin6_last4"])
def test_the_key_of_an_expired_token_still_says_expired_after_the_purge(
    vault: VaultService, clock: Clock, token_format: str
) -> None:
    # The purge shreds an expired token (its fingerprint goes with the ciphertext): the
    # retry could no longer be matched to its card and was answered 409 "used for
    # another PAN", for good.
    card = card_number("400000", 881_004 if token_format == "card_random" else 881_005)
    key = f"order-purged-{token_format}"
    vault.tokenize(
        PAYMENTS,
        TokenizeRequest(pan=Pan(card), format=token_format, idempotency_key=key, ttl_seconds=60),
    )
    clock.now += timedelta(seconds=120)
    assert vault.purge_expired() >= 1

    _retry_is_refused(vault, card, token_format, key, TokenExpired)


@pytest.mark.parametrize("token_format", ["card_random", "pan_bin6_last4"])
def test_the_key_of_a_deleted_token_says_deleted(vault: VaultService, token_format: str) -> None:
    # Deleting shreds the token: a retry with its key met a row without a fingerprint
    # and was answered 409 "used for another PAN" whatever card it sent, for good.
    card = card_number("400000", 881_006 if token_format == "card_random" else 881_007)
    key = f"order-deleted-{token_format}"
    first = vault.tokenize(
        PAYMENTS, TokenizeRequest(pan=Pan(card), format=token_format, idempotency_key=key)
    )
    assert vault.delete(PAYMENTS, first.token)

    for sent in (card, card_number("400000", 881_008)):  # the card, or any other
        _retry_is_refused(vault, sent, token_format, key, TokenDeleted)


@pytest.mark.parametrize("purged", [False, True], ids=["before-purge", "after-purge"])
def test_the_key_of_an_expired_token_says_expired_whatever_card_the_retry_sends(
    vault: VaultService, clock: Clock, purged: bool
) -> None:
    """Session 49 (atk49a's lead): until the purge ran, a retry with another card was
    answered 409 `idempotency_conflict` and the token's own card 410, so the key's
    holder learnt whether a card was the expired token's; after the purge both were 410
    (docs/api.md: "whatever card the retry sends"). Now 410 either way, at any time."""
    card = card_number("400000", 881_010 + purged)
    key = f"order-expired-any-card-{purged}"
    vault.tokenize(
        PAYMENTS,
        TokenizeRequest(pan=Pan(card), format="card_random", idempotency_key=key, ttl_seconds=60),
    )
    clock.now += timedelta(seconds=120)
    if purged:
        assert vault.purge_expired() >= 1
    for sent in (card, card_number("400000", 881_020 + purged)):  # the card, or another
        _retry_is_refused(vault, sent, "card_random", key, TokenExpired)
