"""An idempotency key first answered by convergence is recorded (review tok, F2).

docs/api.md: "the same key from the same caller returns the same token; reused for
another PAN it is `409 idempotency_conflict`". When the key's first call is answered by
convergence (the card already had a token in the domain), no row takes the key: the key
sent again with another card is answered `200` with that card's new token, which now
holds the key, and the first caller's own retry of its successful call is then `409`.
So whoever in the domain learns or guesses a key (order numbers) can take it over and
turn the owner's retries into conflicts, and a `200` or `409` for a probe tells whether
the key's card was held before. Recording the key on a row another call made meets
`UniqueConstraint("owner", "idempotency_key")` (review 39): every key's first answer is
recorded in ``idempotency_keys`` instead (migration 0018), in its transaction."""

from __future__ import annotations

import pytest

from tests.support.pans import card_number
from tests.vault.conftest import PAYMENTS
from vault.errors import IdempotencyConflict
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService


def test_a_key_first_answered_by_convergence_still_refuses_another_card(
    service: VaultService,
) -> None:
    held, other = card_number("400000", 882_001), card_number("400000", 882_002)
    service.tokenize(PAYMENTS, TokenizeRequest(pan=Pan(held), format="pan_bin6_last4"))
    key = "order-882001"
    first = service.tokenize(
        PAYMENTS, TokenizeRequest(pan=Pan(held), format="pan_bin6_last4", idempotency_key=key)
    )
    assert first.existing  # answered by convergence

    with pytest.raises(IdempotencyConflict):
        service.tokenize(
            PAYMENTS,
            TokenizeRequest(pan=Pan(other), format="pan_bin6_last4", idempotency_key=key),
        )
    again = service.tokenize(
        PAYMENTS, TokenizeRequest(pan=Pan(held), format="pan_bin6_last4", idempotency_key=key)
    )
    assert again.token == first.token
