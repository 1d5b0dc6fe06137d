"""A string PostgreSQL text cannot hold (a NUL) that reaches the store past the API's
checks is the caller's error, not an outage: the storage edge answers `InvalidInput`
(422 invalid_request), never `StorageUnavailable` (503), on both stores (review finding
Medium 5, session 8; the API refuses control characters before, this is the defence in
depth)."""

from __future__ import annotations

import pytest

from cofre.errors import CofreError
from tests.vault.conftest import LEDGER, PAYMENTS
from vault.errors import StorageUnavailable
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService

NUL = "a\u0000b"


def test_nul_in_a_token_is_not_an_outage(service: VaultService) -> None:
    with pytest.raises(CofreError) as raised:
        service.detokenize(LEDGER, NUL)
    assert not isinstance(raised.value, StorageUnavailable), raised.value.code


def test_nul_in_an_idempotency_key_is_not_an_outage(service: VaultService) -> None:
    # SQLite stores it (no error); PostgreSQL cannot: the caller's error, not an outage.
    request = TokenizeRequest(Pan("4111111111111111"), "uuid", idempotency_key=NUL)
    failure: CofreError | None = None
    try:
        service.tokenize(PAYMENTS, request)
    except CofreError as exc:
        failure = exc
    assert not isinstance(failure, StorageUnavailable)
