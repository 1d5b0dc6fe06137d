"""Card bundles through the vault service, on SQLite and PostgreSQL and both HSMs: the
PAN, expiry and name sealed together, revealed per the policy's reveal level.

Attacks first: each refusal stores nothing and is audited."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.vault.conftest import GETNET, LEDGER, PAYMENTS, TEST_POLICY
from vault.card import SecurityCode
from vault.errors import (
    BatchItemInvalid,
    CardExpired,
    InvalidCardholderName,
    InvalidExpiry,
    SecurityCodeForbidden,
    SensitiveAuthenticationData,
)
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService

NOW = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
VISA = Pan("4111111111111111")
MC = Pan("5555555555554444")
NAME = "Zo\u00eb \u00c5ngstr\u00f6m"

POLICY = (
    TEST_POLICY.replace(
        '"card_pass", "card_fpe_any"]', '"card_pass", "card_fpe_any", "card_nocode"]', 1
    )
    + """
[formats.card_nocode]
type = "random"
security_code = "forbid"
"""
)


@pytest.fixture
def cards(engine: Engine, hsm_provider: HSMProvider) -> Iterator[VaultService]:
    policy = PolicyEngine(parse_policy(POLICY, kind="toml").policy)
    service = VaultService(engine, hsm_provider, policy, clock=lambda: NOW)
    service.initialize()
    yield service
    service.close()


def _tokens(engine: Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(sa.text("SELECT count(*) FROM tokens")).scalar_one())


def _failures(engine: Engine) -> list[str]:
    with engine.connect() as c:
        payloads = c.execute(sa.text("SELECT payload FROM audit_entries")).scalars()
        return [p for p in payloads if '"outcome":"failed"' in p]


# ------------------------------------------------------------------ attacks
@pytest.mark.parametrize(
    ("details", "error"),
    [
        ({"cardholder_name": "A" * 65}, InvalidCardholderName),
        ({"cardholder_name": "A" * 100_000}, InvalidCardholderName),
        ({"cardholder_name": "ZOE 4111111111111111"}, InvalidCardholderName),
        ({"cardholder_name": "ZOE 5555 5555 5555 4444"}, InvalidCardholderName),
        ({"expiry": "11/26", "cardholder_name": "ZOE"}, None),  # control: accepted
        ({"expiry": "10/26"}, CardExpired),
        ({"expiry": "2026-13"}, InvalidExpiry),
        ({"metadata": {"cvv": "123"}, "expiry": "03/29"}, SensitiveAuthenticationData),
        ({"metadata": {"note": "cvv 123"}, "expiry": "03/29"}, SensitiveAuthenticationData),
    ],
)
def test_bad_card_details_store_nothing(
    cards: VaultService, engine: Engine, details: dict[str, object], error: type[Exception] | None
) -> None:
    request = TokenizeRequest(VISA, "card_random", **details)  # type: ignore[arg-type]
    if error is None:
        cards.tokenize(PAYMENTS, request)
        assert _tokens(engine) == 1
        return
    with pytest.raises(error) as caught:
        cards.tokenize(PAYMENTS, request)
    assert "4111111111111111" not in str(caught.value)
    assert _tokens(engine) == 0
    [failure] = _failures(engine)
    assert caught.value.code in failure  # type: ignore[attr-defined]
    assert "4111111111111111" not in failure
    assert "ZOE" not in failure


def test_a_code_on_a_format_that_forbids_it_stores_nothing(
    cards: VaultService, engine: Engine
) -> None:
    code = SecurityCode("737")
    with pytest.raises(SecurityCodeForbidden) as caught:
        cards.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_nocode", security_code=code))
    assert caught.value.code == "security_code_forbidden"
    with pytest.raises(BatchItemInvalid) as batch:
        cards.tokenize_batch(
            PAYMENTS,
            [
                TokenizeRequest(MC, "card_nocode"),
                TokenizeRequest(VISA, "card_nocode", expiry="03/29", security_code=code),
            ],
        )
    assert (batch.value.index, batch.value.item_code) == (1, "security_code_forbidden")
    assert _tokens(engine) == 0
    assert len(_failures(engine)) == 2
    # Without the code the same card is welcome in that format.
    cards.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_nocode", expiry="03/29"))
    assert _tokens(engine) == 1


# ------------------------------------------------------------------ bundles
def test_a_bundle_is_revealed_per_the_reveal_level(cards: VaultService, engine: Engine) -> None:
    typed = "  Zoe\u0308  A\u030angstro\u0308m "  # decomposed, extra spaces
    record = cards.tokenize(
        PAYMENTS, TokenizeRequest(VISA, "card_random", expiry="03/29", cardholder_name=typed)
    )
    full = cards.detokenize(GETNET, record.token)
    assert full.pan == VISA
    assert (full.expiry, full.cardholder_name) == ("2029-03", NAME)
    masked = cards.detokenize(LEDGER, record.token)
    assert (masked.pan, masked.masked) == (None, "411111******1111")
    assert (masked.expiry, masked.cardholder_name) == ("2029-03", None)
    only_masked = cards.detokenize_masked(PAYMENTS, record.token)
    assert (only_masked.pan, only_masked.cardholder_name) == (None, None)
    assert only_masked.expiry == "2029-03"
    batch = cards.detokenize_batch(GETNET, [record.token])
    assert batch[0].cardholder_name == NAME
    # Neither the name nor the expiry is stored in clear beside the token.
    with engine.connect() as c:
        row = c.execute(sa.text("SELECT * FROM tokens")).one()
    stored = repr(tuple(row)).encode() + b"".join(v for v in row if isinstance(v, bytes))
    for clear in (b"2029-03", NAME.encode(), "\u00c5ngstr".encode()):
        assert clear not in stored


def test_a_token_without_details_reveals_none(cards: VaultService) -> None:
    record = cards.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random"))
    full = cards.detokenize(GETNET, record.token)
    assert (full.pan, full.expiry, full.cardholder_name) == (VISA, None, None)


def test_a_reissued_card_gets_its_new_expiry_on_the_same_token(cards: VaultService) -> None:
    first = cards.tokenize(
        PAYMENTS, TokenizeRequest(MC, "pan_bin6_last4", expiry="01/27", cardholder_name="ZOE DOE")
    )
    again = cards.tokenize(PAYMENTS, TokenizeRequest(MC, "pan_bin6_last4", expiry="2030-05"))
    assert (again.token, again.existing) == (first.token, True)
    full = cards.detokenize(GETNET, first.token)
    assert (full.pan, full.expiry, full.cardholder_name) == (MC, "2030-05", "ZOE DOE")
    # A call without details leaves them as they are.
    cards.tokenize(PAYMENTS, TokenizeRequest(MC, "pan_bin6_last4"))
    assert cards.detokenize(GETNET, first.token).expiry == "2030-05"
    # So does a retry with the first call's idempotency key, whatever it carries: a
    # replay, never a write (a late one would undo a later update, session 30).
    keyed = cards.tokenize(
        PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4", idempotency_key="k", expiry="02/28")
    )
    again = cards.tokenize(
        PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4", idempotency_key="k", expiry="02/29")
    )
    assert again.token == keyed.token
    assert cards.detokenize(GETNET, keyed.token).expiry == "2028-02"


def test_batches_carry_bundles(cards: VaultService) -> None:
    records = cards.tokenize_batch(
        PAYMENTS,
        [
            TokenizeRequest(VISA, "card_random", expiry="03/29", cardholder_name="A B"),
            TokenizeRequest(MC, "card_random"),
        ],
    )
    revealed = cards.detokenize_batch(GETNET, [r.token for r in records])
    assert [(r.expiry, r.cardholder_name) for r in revealed] == [("2029-03", "A B"), (None, None)]
