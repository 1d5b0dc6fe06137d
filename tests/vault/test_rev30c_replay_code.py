"""Review 30c: a retry with an idempotency key is a replay since session 30 (it writes
no card details: a late one undid a token update), but it still held the security code
it carried. A late retry, arriving after the first call's code was used (a relay took
it: the card's authorisation is done), stored that card's security code again, for
the code's life, and a retry carrying another code replaced the one held: sensitive
authentication data kept after its use (PCI DSS 3.3.1), written by a call the vault
answers as "idempotent", nothing new. A replay now holds no code; the first call's
hold, while it lasts, is the one the retry's relay uses."""

from __future__ import annotations

from sqlalchemy import Engine

from tests.vault import test_security_codes as codes
from tests.vault.conftest import PAYMENTS
from tests.vault.test_security_codes import CODE, VISA, _actions, _take
from vault.card import SecurityCode
from vault.service import TokenizeRequest, VaultService

# That module's vault: on the rotation token, where code epoch keys come and go.
clock = codes.clock
vault = codes.vault


def _keyed(code: SecurityCode) -> TokenizeRequest:
    return TokenizeRequest(VISA, "card_random", idempotency_key="order-1", security_code=code)


def test_a_late_keyed_retry_does_not_hold_a_used_code_again(
    vault: VaultService, engine: Engine
) -> None:
    first = vault.tokenize(PAYMENTS, _keyed(CODE))
    assert _take(vault, engine, first.token_id, first.token) == CODE  # the relay used it
    retry = vault.tokenize(PAYMENTS, _keyed(CODE))
    assert retry.token == first.token
    assert _take(vault, engine, first.token_id, first.token) is None
    assert _actions(engine).count("security_code.hold") == 1


def test_a_keyed_retry_with_another_code_leaves_the_held_one(
    vault: VaultService, engine: Engine
) -> None:
    first = vault.tokenize(PAYMENTS, _keyed(CODE))
    vault.tokenize(PAYMENTS, _keyed(SecurityCode("123")))
    assert _take(vault, engine, first.token_id, first.token) == CODE


def test_a_batch_repeating_a_key_holds_the_first_items_code(
    vault: VaultService, engine: Engine
) -> None:
    first, again = vault.tokenize_batch(PAYMENTS, [_keyed(CODE), _keyed(SecurityCode("123"))])
    assert again.token == first.token
    assert _take(vault, engine, first.token_id, first.token) == CODE
