"""Convergent tokenize answers only from a token of the item's own format (the probe
binds the format to search `uq_tokens_domain_convergent`, issue 21): a batch mixing
formats, duplicates and a card whose token in one format has expired gets one token per
card and format, and the expired one is replaced (review 9's test)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.vault.conftest import GETNET, PAYMENTS
from vault.errors import TokenNotFound
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService

VISA = Pan("4111111111111111")
MC = Pan("5555555555554444")


def test_a_batch_mixing_formats_duplicates_and_an_expired_token(service: VaultService) -> None:
    now = [datetime.now(UTC)]
    service._clock = lambda: now[0]
    expiring = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4", ttl_seconds=5))
    last4 = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_last4"))
    now[0] += timedelta(seconds=10)
    items = [
        TokenizeRequest(VISA, "pan_bin6_last4"),
        TokenizeRequest(VISA, "pan_last4"),
        TokenizeRequest(VISA, "pan_bin6_last4"),
        TokenizeRequest(VISA, "pan_last4"),
        TokenizeRequest(MC, "pan_bin6_last4"),
        TokenizeRequest(MC, "pan_last4"),
        TokenizeRequest(MC, "pan_bin6_last4"),
        TokenizeRequest(VISA, "uuid"),
    ]
    r = service.tokenize_batch(PAYMENTS, items)
    assert r[0].token != expiring.token  # the expired token is replaced...
    assert not r[0].existing
    assert r[2].token == r[0].token  # ...once, and its duplicate gets the new one
    assert r[1].token == last4.token  # the other format's live token answers
    assert r[1].existing
    assert r[3].token == last4.token
    assert r[4].token == r[6].token
    assert r[5].token != r[4].token
    assert len({r[0].token, r[1].token, r[4].token, r[5].token, r[7].token}) == 5
    for request, record in zip(items, r, strict=True):
        assert record.format == request.format
        assert service.detokenize(GETNET, record.token).pan == request.pan
    again = service.tokenize_batch(PAYMENTS, items[:2])
    assert [x.token for x in again] == [r[0].token, last4.token]
    with pytest.raises(TokenNotFound):
        service.detokenize(GETNET, expiring.token)
