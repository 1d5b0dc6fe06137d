"""Review 28b (attacker): the stale-record delete of idempotency keys (`_forget_stale`)
never touches a record within the window, whoever made it, when a batch mixes a
forgotten key with one another identity of the domain recorded recently. SQLite and
PostgreSQL (the `engine` fixture)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from tests.support.pans import card_number
from tests.support.policies import vault_on
from tests.vault.conftest import PAYMENTS
from tests.vault.test_rev27_idem import POLICY, SHOP_B
from vault.errors import IdempotencyConflict
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService

WINDOW = timedelta(hours=24)


def _request(card: str, key: str | None) -> TokenizeRequest:
    return TokenizeRequest(pan=Pan(card), format="pan_bin6_last4", idempotency_key=key)


@pytest.fixture
def shared(engine: Engine, hsm_provider: HSMProvider) -> Iterator[VaultService]:
    """Payments and shop-b in one domain (review 27's policy)."""
    service = vault_on(engine, hsm_provider, POLICY)
    yield service
    service.close()


def _recorded(engine: Engine, key: str) -> list[tuple[str, str]]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT owner, token_id FROM idempotency_keys WHERE idempotency_key = :k"),
            {"k": key},
        ).all()
    return [(str(owner), str(token_id)) for owner, token_id in rows]


def test_a_batch_reclaiming_a_stale_key_keeps_a_fresh_key_of_another_identity(
    shared: VaultService, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Holds: payments' batch sends a key forgotten a minute ago and a key shop-b (same
    domain) recorded ten minutes ago. The stale record goes, the fresh one stays
    shop-b's and answers its card; another card on it is still 409 for both."""
    start = datetime.now(UTC)
    old_card = card_number("400000", 887_101)
    shared.tokenize(PAYMENTS, _request(old_card, None))
    shared.tokenize(PAYMENTS, _request(old_card, "r28b-stale"))  # recorded at `start`
    monkeypatch.setattr(shared, "_clock", lambda: start + WINDOW - timedelta(minutes=10))
    shop_card = card_number("400000", 887_102)
    shop_token = shared.tokenize(SHOP_B, _request(shop_card, None)).token
    assert shared.tokenize(SHOP_B, _request(shop_card, "r28b-fresh")).token == shop_token
    fresh_before = _recorded(engine, "r28b-fresh")
    monkeypatch.setattr(shared, "_clock", lambda: start + WINDOW + timedelta(minutes=1))
    new_card = card_number("400000", 887_103)
    answered = shared.tokenize_batch(
        PAYMENTS, [_request(new_card, "r28b-stale"), _request(shop_card, "r28b-fresh")]
    )
    assert answered[1].token == shop_token
    assert _recorded(engine, "r28b-fresh") == fresh_before
    assert [owner for owner, _ in _recorded(engine, "r28b-stale")] == [PAYMENTS.identity]
    intruder = card_number("400000", 887_104)
    for ctx in (PAYMENTS, SHOP_B):
        with pytest.raises(IdempotencyConflict):
            shared.tokenize(ctx, _request(intruder, "r28b-fresh"))
        with pytest.raises(IdempotencyConflict):
            shared.tokenize(ctx, _request(intruder, "r28b-stale"))
