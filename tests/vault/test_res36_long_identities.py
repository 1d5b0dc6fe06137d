"""Session 36: an identity (or a token domain) longer than the vault can record whole is
refused at policy load.

The audit log cuts every string at 512 characters, the actor included, and the
database keeps an identity in `VARCHAR(255)` columns (a token's owner and domain, the
rate and quota counters, the oracle guard, a ceremony's proposer and approvers, the
officers' nonces). An identity of 256 to 512 characters was recorded whole in the log
and refused by PostgreSQL at its first counted call (SQLite does not check the length);
one over 512 was recorded cut, so its entries did not name it and two identities alike
in their first 512 characters were one actor to the verifier (PCI DSS 10.2.2). The
policy loader now refuses both, naming the identity by its position (never echoing it:
it may be long and hold anything), so `cofre serve`, `cofre dev` and a reload refuse
such a policy as any that does not load (the process tests of
tests/cofre_cli/test_rev35_masked_identity_policy.py cover those paths)."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from audit.schema import audit_entries
from hsm.provider import HSMProvider
from policies import models
from policies.errors import PolicyInvalid
from policies.loader import parse_policy
from tests.support.policies import vault_on
from vault.pan import Pan
from vault.service import CallContext, TokenizeRequest

VISA = Pan("4111111111111111")
SERVICE = '[identities."spiffe://cofre/payments"]\noperations = ["lookup"]\n\n'


def _tokenizer(identity: str, extra: str = "") -> str:
    return (
        f'[identities."{identity}"]\noperations = ["tokenize", "lookup"]\n'
        f'formats = ["uuid"]\n{extra}\n'
    )


def _long(length: int) -> str:
    prefix = "spiffe://corp.example/"
    return prefix + "a" * (length - len(prefix))


@pytest.mark.parametrize("length", [256, 513, 4096])
def test_an_identity_longer_than_the_vault_records_is_refused(length: int) -> None:
    with pytest.raises(PolicyInvalid) as refused:
        parse_policy(SERVICE + _tokenizer(_long(length)), kind="toml")
    message = str(refused.value)
    assert "identity 2 of 2" in message, message
    assert f"{length} characters" in message, message
    assert "a" * 64 not in message  # named by its position, not echoed


@pytest.mark.parametrize("field", ["domain", "read_domains"])
def test_a_token_domain_longer_than_the_vault_records_is_refused(field: str) -> None:
    value = f'"{_long(256)}"' if field == "domain" else f'["{_long(256)}"]'
    extra = f"{field} = {value}\n"
    with pytest.raises(PolicyInvalid) as refused:
        parse_policy(SERVICE + _tokenizer("spiffe://cofre/shop", extra), kind="toml")
    assert "255 characters" in str(refused.value)
    assert "a" * 64 not in str(refused.value)


def test_an_identity_at_the_bound_is_recorded_whole_on_every_database(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """The bound is the database's: an identity of exactly `models.MAX_IDENTITY` characters
    tokenizes (owner, domain and counters written) and is the actor of its entry whole."""
    identity = _long(models.MAX_IDENTITY)
    vault = vault_on(engine, hsm_provider, SERVICE + _tokenizer(identity))
    try:
        made = vault.tokenize(CallContext(identity, "req-long"), TokenizeRequest(VISA, "uuid"))
    finally:
        vault.close()
    assert made.token
    with engine.connect() as connection:
        actors = {
            json.loads(payload)["actor"]
            for payload in connection.scalars(sa.select(audit_entries.c.payload))
        }
    assert identity in actors
