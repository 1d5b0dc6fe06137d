"""An idempotency key is the domain's (README, policy keys; docs/threat-model.md), yet the
token store also kept one key per *owner* (`UniqueConstraint("owner",
"idempotency_key")`). After a policy reload moves an identity into another domain, its
retry of a key it used before found no row in its new domain, stored a new one, and met
that constraint: a unique conflict, retried five times, then answered `503
storage_unavailable`, every time, to a caller that retries 503s (review 39). A batch
with one such item failed whole with the same 503, naming no item.

The answer must be the documented one for a key in a domain: a token (the key is new in
this domain), or a clear 409 `idempotency_conflict` naming the item; never an outage."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.pans import card_number
from tests.vault.conftest import PAYMENTS, TEST_POLICY
from vault.errors import BatchItemInvalid, IdempotencyConflict
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService

# payments' identity, moved into a shared domain (the only change).
MOVED = TEST_POLICY.replace(
    'reveal = "masked"\n# The service tests',
    'reveal = "masked"\ndomain = "spiffe://cofre/shop"\n# The service tests',
    1,
)


@pytest.fixture
def vault(engine: Engine, hsm_provider: HSMProvider) -> Iterator[VaultService]:
    service = VaultService(
        engine, hsm_provider, PolicyEngine(parse_policy(TEST_POLICY, kind="toml").policy)
    )
    service.initialize()
    yield service
    service.close()


def _move_payments(vault: VaultService) -> None:
    assert MOVED != TEST_POLICY
    vault.replace_policy(
        PolicyEngine(parse_policy(MOVED, kind="toml").policy), actor="ops", source="test"
    )


def test_a_key_retried_after_a_domain_change_is_not_an_outage(vault: VaultService) -> None:
    card = Pan(card_number("6", 1))
    first = vault.tokenize(PAYMENTS, TokenizeRequest(card, "uuid", idempotency_key="order-1"))
    _move_payments(vault)
    try:
        again = vault.tokenize(PAYMENTS, TokenizeRequest(card, "uuid", idempotency_key="order-1"))
    except IdempotencyConflict:
        return  # a clear 409
    assert again.token != first.token  # a new domain: an unrelated token


def test_a_batch_item_with_such_a_key_is_named_not_an_outage(vault: VaultService) -> None:
    card = Pan(card_number("6", 2))
    vault.tokenize(PAYMENTS, TokenizeRequest(card, "uuid", idempotency_key="order-2"))
    _move_payments(vault)
    batch = [TokenizeRequest(Pan(card_number("6", 100 + i)), "uuid") for i in range(1000)]
    batch[700] = TokenizeRequest(card, "uuid", idempotency_key="order-2")
    refused: BatchItemInvalid | None = None
    try:
        records = vault.tokenize_batch(PAYMENTS, batch)
    except BatchItemInvalid as exc:
        refused = exc
    if refused is not None:
        assert (refused.index, refused.item_code) == (700, "idempotency_conflict")
    else:
        assert len(records) == 1000
