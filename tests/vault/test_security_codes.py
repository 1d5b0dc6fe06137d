"""Security codes held once (issue 22 item 4; PCI DSS 3.3.1, 3.3.2), on SQLite and
PostgreSQL, SoftHSM2 and the CloudHSM-behaviour shim.

Attacks first: a code is never answered by a reveal, never stored in clear, opens only
for its own token, cannot outlive its hour, and its key epoch is destroyed in the HSM
once every code under it has expired."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from hsm.errors import HSMKeyNotFound
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.softhsm import destroy_code_epochs, settled_ready
from tests.vault.conftest import GETNET, LEDGER, PAYMENTS, TEST_POLICY
from vault.card import SecurityCode
from vault.errors import IntegrityError, SecurityCodeUnavailable
from vault.pan import Pan
from vault.security_codes import HeldCodes, code_aad, epoch_of
from vault.service import TokenizeRequest, VaultService

START = datetime(2026, 12, 1, 6, 10, tzinfo=UTC)
VISA = Pan("4111111111111111")
MC = Pan("5555555555554444")
CODE = SecurityCode("7373")


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def vault(engine: Engine, rotation_provider: HSMProvider, clock: Clock) -> Iterator[VaultService]:
    # The rotation token: epoch keys come and go there, never beside the shared token's.
    policy = PolicyEngine(parse_policy(TEST_POLICY, kind="toml").policy)
    service = VaultService(engine, rotation_provider, policy, clock=clock)
    service.initialize()
    yield service
    service.close()
    destroy_code_epochs(rotation_provider)


def _take(vault: VaultService, engine: Engine, token_id: str, token: str) -> SecurityCode | None:
    codes: HeldCodes = vault._codes
    with engine.begin() as connection:
        return codes.take(connection, token_id=token_id, token=token, now=vault._clock())


def _rows(engine: Engine, table: str) -> list[tuple[Any, ...]]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(sa.text(f"SELECT * FROM {table}"))]


def _actions(engine: Engine) -> list[str]:
    with engine.connect() as c:
        payloads = c.execute(sa.text("SELECT payload FROM audit_entries ORDER BY id")).scalars()
        return [p.split('"action":"')[1].split('"')[0] for p in payloads]


# ------------------------------------------------------------------ attacks
def test_no_reveal_answers_a_code_and_none_is_stored_in_clear(
    vault: VaultService, engine: Engine
) -> None:
    record = vault.tokenize(
        PAYMENTS, TokenizeRequest(VISA, "card_random", expiry="03/29", security_code=CODE)
    )
    for revealed in (
        vault.detokenize(GETNET, record.token),
        vault.detokenize(LEDGER, record.token),
        vault.detokenize_masked(PAYMENTS, record.token),
        *vault.detokenize_batch(GETNET, [record.token]),
    ):
        fields = [getattr(revealed, name) for name in revealed.__slots__]
        assert not any(_holds_code(repr(value)) for value in fields)
        assert not any(isinstance(value, SecurityCode) for value in fields)
    with engine.connect() as c:
        for table in ("tokens", "security_codes", "audit_entries", "security_code_epochs"):
            for row in c.execute(sa.text(f"SELECT * FROM {table}")):
                for value in row:
                    text = value.decode("latin-1") if isinstance(value, bytes) else repr(value)
                    assert not _holds_code(text), table


# The code on its own, not four digits inside a longer run: a random card_random token,
# an entry's time ("15:19:34.737372", a clean-clone CI of session 33) or a base64 key
# check may hold "7373" by chance; the code stored or answered in clear stands alone.
_CODE_ALONE = re.compile(r"(?<![0-9A-Za-z+/])7373(?![0-9A-Za-z+/])")


def _holds_code(text: str) -> bool:
    return _CODE_ALONE.search(text) is not None


def test_a_code_opens_only_for_its_own_token(vault: VaultService, engine: Engine) -> None:
    a = vault.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random", security_code=CODE))
    b = vault.tokenize(PAYMENTS, TokenizeRequest(MC, "card_random"))
    # An attacker with write access to the database moves a's sealed code to b's row.
    with engine.begin() as c:
        c.execute(
            sa.text("UPDATE security_codes SET token_id = :b WHERE token_id = :a"),
            {"a": a.token_id, "b": b.token_id},
        )
    with pytest.raises(IntegrityError):
        _take(vault, engine, b.token_id, b.token)


def test_a_code_does_not_outlive_its_ttl(vault: VaultService, engine: Engine, clock: Clock) -> None:
    record = vault.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random", security_code=CODE))
    clock.now += timedelta(hours=1)
    assert _take(vault, engine, record.token_id, record.token) is None
    assert _rows(engine, "security_codes") == []
    assert vault.security_code_counts() == {"held": 1, "used": 0, "expired": 1, "held_now": 0}


def test_spent_epoch_keys_are_destroyed_in_the_hsm(
    vault: VaultService, engine: Engine, clock: Clock, rotation_provider: HSMProvider
) -> None:
    record = vault.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random", security_code=CODE))
    label = f"cofre-csc-e{epoch_of(START)}"
    info = rotation_provider.describe_key(label)
    assert (info.sensitive, info.extractable, info.never_extractable) == (True, False, True)
    settled_ready(vault.check_ready)  # the epoch key is registered: not a stray key
    [sealed] = _rows(engine, "security_codes")
    # Within the TTL nothing goes.
    clock.now = START + timedelta(minutes=30)
    assert vault.sweep_security_codes().destroyed == ()
    # The code expired, but a code held at the end of its hour could still be live.
    clock.now = START.replace(minute=0) + timedelta(hours=1, minutes=59)
    swept = vault.sweep_security_codes()
    assert (swept.expired, swept.destroyed) == (1, ())
    assert rotation_provider.has_key(label)
    # One hour (the TTL) after the epoch ended: destroyed, and the code with it.
    clock.now = START.replace(minute=0) + timedelta(hours=2)
    assert vault.sweep_security_codes().destroyed == (label,)
    assert not rotation_provider.has_key(label)
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT destroyed_at FROM security_code_epochs")).scalar()
    assert "key.destroy" in _actions(engine)
    # Even the sealed bytes of a backup taken while it was held cannot be opened now.
    iv, ciphertext = bytes(sealed[2]), bytes(sealed[3])
    aad = code_aad(record.token_id, record.token, epoch_of(START))
    with pytest.raises(HSMKeyNotFound):
        rotation_provider.aead_decrypt(label, iv, ciphertext, aad)
    settled_ready(vault.check_ready)


def test_a_substitute_epoch_key_is_never_used(
    vault: VaultService, engine: Engine, rotation_provider: HSMProvider
) -> None:
    vault.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random", security_code=CODE))
    label = f"cofre-csc-e{epoch_of(START)}"
    # Someone with HSM credentials swaps this hour's key for one of their own.
    rotation_provider.destroy_key(label)
    rotation_provider.generate_aead_key(label)
    fresh = VaultService(engine, rotation_provider, vault.policy, clock=vault._clock)
    try:
        with pytest.raises(SecurityCodeUnavailable, match="not the registered one"):
            fresh.tokenize(PAYMENTS, TokenizeRequest(MC, "card_random", security_code=CODE))
    finally:
        fresh.close()
    assert len(_rows(engine, "security_codes")) == 1  # the first one only
    assert len(_rows(engine, "tokens")) == 1


# ------------------------------------------------------------------ holding and taking
def test_a_code_is_taken_once(vault: VaultService, engine: Engine) -> None:
    record = vault.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random", security_code=CODE))
    assert _take(vault, engine, record.token_id, record.token) == CODE
    assert _take(vault, engine, record.token_id, record.token) is None
    assert vault.security_code_counts() == {"held": 1, "used": 1, "expired": 0, "held_now": 0}
    assert _actions(engine).count("security_code.hold") == 1


def test_a_new_code_replaces_the_held_one_on_the_same_token(
    vault: VaultService, engine: Engine
) -> None:
    first = vault.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4", security_code=CODE))
    again = vault.tokenize(
        PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4", security_code=SecurityCode("123"))
    )
    assert again.token == first.token
    assert _take(vault, engine, first.token_id, first.token) == SecurityCode("123")
    counts = vault.security_code_counts()
    assert (counts["held"], counts["used"], counts["expired"]) == (2, 1, 1)


def test_batches_hold_codes_per_token_and_delete_discards(
    vault: VaultService, engine: Engine
) -> None:
    records = vault.tokenize_batch(
        PAYMENTS,
        [
            TokenizeRequest(VISA, "card_random", security_code=CODE),
            TokenizeRequest(MC, "card_random"),
        ],
    )
    assert len(_rows(engine, "security_codes")) == 1
    vault.delete(PAYMENTS, records[0].token)
    assert _rows(engine, "security_codes") == []
    assert _take(vault, engine, records[1].token_id, records[1].token) is None


def test_counts_by_period(vault: VaultService, clock: Clock) -> None:
    vault.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random", security_code=CODE))
    clock.now += timedelta(hours=3)
    vault.tokenize(PAYMENTS, TokenizeRequest(MC, "card_random", security_code=CODE))
    assert vault.security_code_counts(START, START + timedelta(hours=1))["held"] == 1
    assert vault.security_code_counts(START + timedelta(hours=1))["held"] == 1
    assert vault.security_code_counts()["held"] == 2
    # A fresh hour, a fresh key.
    assert len(_rows(engine=vault._engine, table="security_code_epochs")) == 2


def test_the_ttl_is_at_most_an_hour(engine: Engine, rotation_provider: HSMProvider) -> None:
    policy = PolicyEngine(parse_policy(TEST_POLICY, kind="toml").policy)
    with pytest.raises(ValueError, match="1 hour"):
        VaultService(engine, rotation_provider, policy, security_code_ttl=timedelta(hours=2))
