"""A new token never equals a card the vault holds, private-label cards included (review
15): a `luhn = "fail"` token keeps a card's BIN and last four, so in a range the policy
exempts from Luhn it can be another card of that range. Every database here lives outside
pytest's base temp and is dropped, not dumped: without the fix it would hold a token that
is a card in clear, which the session's leak scan would report."""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text

from hsm.provider import HSMProvider
from policies.formats import FormatSpec
from tests.support.policies import vault_on
from vault.models import CallContext
from vault.operations.tokenize import TokenizeOperations
from vault.pan import Pan, luhn_valid
from vault.service import TokenizeRequest, VaultService

POLICY = """
[formats.card_pass]
type = "random"
luhn = "pass"

[luhn_exempt.acme-store-card]
prefixes = ["6000"]

[identities."spiffe://cofre/payments"]
operations = ["tokenize", "detokenize_masked"]
formats = ["pan_bin6_last4", "card_pass"]
reveal = "masked"
oracle_guard = { max_pans_per_bucket = 100000 }

[identities."spiffe://cofre/store"]
operations = ["tokenize", "detokenize_masked"]
formats = ["pan_bin6_last4", "card_pass"]
reveal = "masked"
oracle_guard = { max_pans_per_bucket = 100000 }
"""
PAYMENTS = CallContext("spiffe://cofre/payments", "req-p")
STORE = CallContext("spiffe://cofre/store", "req-s")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The suite's `database_url`, but in a directory or database of its own, removed
    without a dump (`tests/vault/conftest.py`'s `engine` opens it)."""
    if request.param == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            yield f"sqlite:///{Path(directory) / 'cofre.sqlite3'}"
        return
    postgres = request.getfixturevalue("postgres")
    name = f"never_a_card_{secrets.token_hex(6)}"
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres.sqlalchemy_url(name)
    finally:  # dropped, not dumped: without the fix it holds a token equal to a card
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def service(engine: Engine, hsm_provider: HSMProvider) -> Iterator[VaultService]:
    vault = vault_on(engine, hsm_provider, POLICY)
    yield vault
    vault.close()


def _held_tokens_equal_to_cards(service: VaultService, engine: Engine) -> set[str]:
    """Every stored token that is also a card the vault holds (by fingerprint)."""
    with engine.connect() as c:
        toks = [
            t for (t,) in c.execute(text("SELECT token FROM tokens WHERE fingerprint IS NOT NULL"))
        ]
        found = set()
        for t in toks:
            if t.isdigit() and service._is_held_pan(c, t):
                found.add(t)
    return found


def _force(monkeypatch: pytest.MonkeyPatch, mapping: dict[str, str]) -> None:
    real = TokenizeOperations._first_candidate

    def draw(
        self: TokenizeOperations, spec: FormatSpec, pan: Pan, domain: str, *draws: Any
    ) -> str:  # `draws`: a batch's random source (`_plan`), passed on as it came
        return mapping.get(pan.reveal()) or real(self, spec, pan, domain, *draws)

    monkeypatch.setattr(TokenizeOperations, "_first_candidate", draw)


# Two private-label cards of one BIN6 and last four, both failing Luhn (policy-exempt).
_EXEMPT = [d for d in (f"600012{m:06d}4321" for m in range(100)) if not luhn_valid(d)]
P1, P2 = Pan(_EXEMPT[0]), Pan(_EXEMPT[1])


def test_a_luhn_fail_token_never_equals_a_held_luhn_exempt_card(
    service: VaultService, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another domain holds P2; P1's draw is forced to be P2 (a real draw hits 1 in the
    # bucket's size, far more often for short private-label cards).
    service.tokenize(STORE, TokenizeRequest(P2, "pan_bin6_last4"))
    _force(monkeypatch, {P1.reveal(): P2.reveal()})
    record = service.tokenize(PAYMENTS, TokenizeRequest(P1, "pan_bin6_last4"))
    assert record.token != P2.reveal()
    assert _held_tokens_equal_to_cards(service, engine) == set()


def test_a_luhn_fail_token_never_equals_a_luhn_exempt_card_of_the_same_batch(
    service: VaultService, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _force(monkeypatch, {P1.reveal(): P2.reveal()})
    records = service.tokenize_batch(
        PAYMENTS, [TokenizeRequest(P1, "pan_bin6_last4"), TokenizeRequest(P2, "pan_bin6_last4")]
    )
    assert {r.token for r in records}.isdisjoint({P1.reveal(), P2.reveal()})
